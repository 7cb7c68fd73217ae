"""`python -m ontosearch.bench` runs the same command as `python -m ontosearch bench`."""

import sys

from ontosearch.bench import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

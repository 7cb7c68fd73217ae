"""`python -m ontosearch bench`: the benchmark suite of issue 5 (see `ontosearch.bench.run`).

Imports nothing heavy at package level, so `python -m ontosearch --help` stays fast.
"""

from __future__ import annotations


def main(argv: list[str]) -> int:
    from ontosearch.bench.run import main as run_main

    return run_main(argv)

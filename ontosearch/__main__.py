"""`python -m ontosearch <command> ...`: one module per command, imported lazily."""

from __future__ import annotations

import importlib
import sys

# command -> module with a `main(argv: list[str]) -> int`
COMMANDS = {
    "annotate": "ontosearch.annotate",
    "build-snapshot": "ontosearch.snapshot_build",
    "publish-snapshot": "ontosearch.snapshot_store",
    "restore-snapshot": "ontosearch.restore",
    "serve": "ontosearch.serve",
    "workflow": "ontosearch.workflow.local",
    "task-agent": "ontosearch.task_agent",
    "bench": "ontosearch.bench",
    "embedder-bundle": "ontosearch.embedder_bundle",
    "cost": "ontosearch.cost",
    "loadtest": "ontosearch.loadtest",
}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in {"-h", "--help", "help"}:
        print("usage: python -m ontosearch <command> [options]\n\ncommands:")
        for name in COMMANDS:
            print(f"  {name}")
        print("\n`python -m ontosearch <command> --help` describes each one.")
        return 0 if argv else 2
    name, rest = argv[0], argv[1:]
    module_name = COMMANDS.get(name)
    if module_name is None:
        print(f"ontosearch: unknown command {name!r}; known: {', '.join(COMMANDS)}", file=sys.stderr)
        return 2
    module = importlib.import_module(module_name)
    return int(module.main(rest) or 0)


if __name__ == "__main__":
    sys.exit(main())

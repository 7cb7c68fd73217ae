"""Where the npm tools of the local Step Functions runner live and how to start Node for them.

aws-local-stepfunctions declares Node >= 22 but only needs `Promise.withResolvers` from it; the
runner script polyfills that, so Debian's Node 20 works too. A `node` binary named by
ONTOSEARCH_NODE wins over the one on PATH.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path


class NodeToolsMissing(RuntimeError):
    """Node or the npm packages in asl/ are not installed."""


def asl_dir() -> Path:
    """The asl/ folder of the repository (package.json, lock file, runner script)."""
    return Path(__file__).resolve().parents[2] / "asl"


def node_command() -> list[str]:
    node = os.environ.get("ONTOSEARCH_NODE") or shutil.which("node")
    if not node:
        raise NodeToolsMissing("`node` was not found; install Node.js 20+ (scripts/setup.sh expects it)")
    modules = asl_dir() / "node_modules"
    if not (modules / "aws-local-stepfunctions").is_dir() or not (modules / "asl-validator").is_dir():
        raise NodeToolsMissing(
            f"the npm packages of the local Step Functions runner are missing in {modules}; "
            "run `bash scripts/setup.sh` (or `cd asl && npm ci`)"
        )
    return [node]

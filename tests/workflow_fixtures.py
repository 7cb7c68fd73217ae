"""Fixtures of the batch workflow tests: a small real snapshot and a process census.

Used with `pytest_plugins = ["workflow_fixtures"]`.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

# Labels whose terms are in the small snapshot (plus 40 more CL terms for realistic neighbours).
SNAPSHOT_LABELS = (
    "T cell", "B cell", "hepatocyte", "neuron", "macrophage", "fibroblast", "regulatory T cell",
    "astrocyte", "erythrocyte", "natural killer cell", "monocyte", "endothelial cell",
)


@pytest.fixture(scope="session")
def small_snapshot(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real CL snapshot (MiniLM, ~50 terms) built and verified by build_snapshot."""
    from ontosearch.ontologies import Ontology, load_ontology
    from ontosearch.snapshot_build import build_snapshot

    cl = load_ontology("cl")
    wanted = [t for t in cl.terms if t.label in SNAPSHOT_LABELS]
    terms = {t.id: t for t in [*wanted, *cl.terms[:40]]}
    out = tmp_path_factory.mktemp("workflow-snapshot")
    ontology = Ontology("cl", cl.version, list(terms.values()))
    build_snapshot([ontology], out, progress=False, log=lambda _m: None)
    return out


def processes_mentioning(text: str) -> list[str]:
    """Command lines of live processes that contain `text` (e.g. a replica's work directory)."""
    found = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit() or int(pid) == os.getpid():
            continue
        try:
            raw = Path(f"/proc/{pid}/cmdline").read_bytes()
            status = Path(f"/proc/{pid}/status").read_text()
        except OSError:
            continue
        if "State:\tZ" in status:
            continue
        cmdline = raw.replace(b"\0", b" ").decode(errors="replace")
        if text in cmdline:
            found.append(f"{pid}: {cmdline}")
    return found


def wait_until_gone(text: str, timeout: float) -> list[str]:
    deadline = time.monotonic() + timeout
    left = processes_mentioning(text)
    while left and time.monotonic() < deadline:
        time.sleep(0.2)
        left = processes_mentioning(text)
    return left

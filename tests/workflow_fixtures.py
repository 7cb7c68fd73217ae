"""Fixtures of the batch workflow tests: a small real snapshot.

Used with `pytest_plugins = ["workflow_fixtures"]`; the process census the tests check with is in
`process_census` (a plain module, so importing it never pre-empts this plugin's registration).
"""

from __future__ import annotations

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

"""ontosearch: ontology term search on ChromaDB, locally or against a deployed service.

The runtime half of the project: ontologies, embedders, snapshots, `connect()`,
matching and annotation. It never imports pulumi, and it imports its heavy
dependencies (chromadb, torch) only where they are used, so that the task's restore
step and the Lambdas load only what they need.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__all__ = ["__version__", "annotate_anndata", "connect", "match"]

# The library's version, as SSSOM output names its mapping tool.
__version__ = "0.1.0"

if TYPE_CHECKING:  # pragma: no cover
    from ontosearch.anndata_io import annotate_anndata
    from ontosearch.connect import connect
    from ontosearch.matcher import match


def __getattr__(name: str) -> Any:
    if name == "connect":
        from ontosearch.connect import connect

        return connect
    if name == "annotate_anndata":
        from ontosearch.anndata_io import annotate_anndata

        return annotate_anndata
    if name == "match":
        from ontosearch.matcher import match

        return match
    raise AttributeError(name)

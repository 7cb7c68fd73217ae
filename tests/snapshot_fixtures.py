"""pytest plugin (`pytest_plugins = ["snapshot_fixtures"]`): real snapshots shared by a test session."""

from __future__ import annotations

from pathlib import Path

import pytest

# Re-exported for test modules written before the helpers moved out of this plugin module; new code
# imports them from snapshot_helpers (importing a plugin module directly defeats assert rewriting).
from snapshot_helpers import (  # noqa: F401
    DIMENSIONS,
    SNAPSHOT_COLLECTIONS,
    TEST_EMBEDDER,
    copy_snapshot,
    make_snapshot,
    write_persist_dir,
)


@pytest.fixture(scope="session")
def snapshot_pair(tmp_path_factory) -> tuple[Path, Path]:
    """Two snapshots with the same collection names and sizes but different data (A and B).

    uberon_test is larger than Chroma's HNSW sync threshold (1000), cl_test smaller: both ways a
    collection can sit on disk are covered.
    """
    work = tmp_path_factory.mktemp("snapshots")
    make_snapshot(work, work / "a", SNAPSHOT_COLLECTIONS, seed=0)
    make_snapshot(work, work / "b", SNAPSHOT_COLLECTIONS, seed=1)
    return work / "a", work / "b"

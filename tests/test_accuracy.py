"""Accuracy with the real MiniLM embedder: a fast smoke test on a CL subset, and the full CL bench."""

from __future__ import annotations

import random
import sys
from pathlib import Path

import chromadb
import pytest

from ontosearch.embedders import get_embedder
from ontosearch.indexing import index_ontology
from ontosearch.matcher import match
from ontosearch.ontologies import Ontology, load_ontology

BENCH = Path(__file__).resolve().parent.parent / "bench"
sys.path.insert(0, str(BENCH))

from accuracy import by_confidence, pooled_confidence, read_set, run, score  # noqa: E402


def test_matcher_finds_real_world_and_variant_labels_among_distractors(tmp_path: Path) -> None:
    """40 real-world and 40 variant labels against their terms plus 300 random CL distractors."""
    cl = load_ontology("cl")
    cases = read_set("realworld", "cl")[:40] + read_set("variants", "cl")[:40]
    wanted = {term_id for case in cases for term_id in case.expected}
    others = [term for term in cl.terms if term.id not in wanted]
    distractors = random.Random(7).sample(others, 300)
    subset = Ontology("cl", cl.version, [t for t in cl.terms if t.id in wanted] + distractors)
    client = chromadb.PersistentClient(path=str(tmp_path))
    embedder = get_embedder()
    index_ontology(client, subset, embedder, progress=False)

    results = match([case.label for case in cases], "cl", top_k=5, client=client, embedder=embedder)
    real_world = score(results[:40], cases[:40])
    variants = score(results[40:], cases[40:])
    assert real_world["top1"] >= 0.85, real_world
    assert real_world["top5"] >= 0.9, real_world
    assert variants["top1"] >= 0.98, variants
    # a high-confidence first match is right (CLASS_PRECISION: 0.98 pooled over the full sets)
    high = by_confidence(results[:40], cases[:40])["high"]
    assert high["n"] >= 20 and high["correct"] >= high["n"] - 1, high


@pytest.mark.slow
def test_full_cell_ontology_meets_the_variant_target_and_holds_real_world_accuracy(tmp_path: Path) -> None:
    """The whole CL collection with synonym vectors, as `python bench/accuracy.py --ontologies cl` runs it."""
    report = run(["cl"], ["realworld", "variants"], ["matcher/synonyms"], tmp_path, get_embedder())
    rows = {row["set"]: row for row in report["rows"]}
    assert rows["variants"]["top1"] >= 0.98
    # measured 0.874 (target 0.90, missed: see bench/results/accuracy.md); guard against regressions
    assert rows["realworld"]["top1"] >= 0.85
    assert rows["realworld"]["top5"] >= 0.9
    # The confidence classes keep their order and roughly their calibrated precision on CL
    # (bench/results/confidence.md: high 0.984, good 0.931 over CL's five real-world sets).
    later = ["realworld2", "realworld3", "realworld4", "realworld5"]
    extra = run(["cl"], later, ["matcher/synonyms"], tmp_path, get_embedder())  # reuses the collection
    pooled = pooled_confidence({"rows": report["rows"] + extra["rows"]})
    assert pooled["high"]["precision"] >= 0.95 and pooled["good"]["precision"] >= 0.88, pooled
    assert pooled["high"]["precision"] > pooled["low"]["precision"], pooled
    assert pooled["lower_ranks"]["precision"] < 0.05, pooled

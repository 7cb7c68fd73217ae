"""Confidence classes: the rules, their calibration against the committed benchmark, and
`annotate --min-confidence` on a real Chroma store of a packaged-CL subset (MiniLM)."""

from __future__ import annotations

import csv
import io
import json
import sys
from dataclasses import replace
from pathlib import Path

import chromadb
import pytest

from ontosearch import annotate, constants
from ontosearch.confidence import (
    CLASS_PRECISION,
    LOWER_RANK_PRECISION,
    ConfidenceError,
    at_least,
    check_class,
    classify,
)
from ontosearch.embedders import get_embedder
from ontosearch.indexing import index_ontology
from ontosearch.label_io import write_rows
from ontosearch.matcher import match
from ontosearch.ontologies import Ontology, load_ontology

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))

from accuracy import pooled_confidence  # noqa: E402

KEYWORDS = ("T cell", "B cell", "oligodendrocyte")


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    full = load_ontology("cl")
    terms = [t for t in full.terms if any(k in t.label for k in KEYWORDS)]
    kept = {t.id for t in terms}
    subset = Ontology("cl", full.version, [replace(t, parents=tuple(p for p in t.parents if p in kept))
                                           for t in terms])
    path = tmp_path_factory.mktemp("store")
    index_ontology(chromadb.PersistentClient(path=str(path)), subset, get_embedder(), progress=False)
    return path


def test_classes_follow_the_evidence_and_the_rank() -> None:
    assert [classify(kind, 1, 0.0) for kind in ("id", "replaced_id", "label", "alias")] == ["high"] * 4
    assert [classify(kind, 1, 0.0) for kind in ("synonym", "abbreviation")] == ["good"] * 2
    assert classify("lexical", 1, 0.0) == "medium"  # whatever its margin
    assert classify("vector", 1, 0.05) == "medium"
    assert classify("vector", 1, 0.049) == "low"
    assert classify("replaced_id", 1, 1.0, suggested=True) == "medium"
    # every row after the first is low, whatever found it
    assert {classify(kind, rank, 1.0) for kind in ("label", "vector", "id") for rank in (2, 3, 10)} == {"low"}


def test_min_confidence_orders_the_classes_and_refuses_unknown_ones() -> None:
    assert at_least("high", "good") and at_least("good", "good") and not at_least("medium", "good")
    assert at_least("low", "low") and not at_least("", "medium")
    assert check_class(" Good ") == "good"
    with pytest.raises(ConfidenceError, match="use one of high, good, medium, low"):
        check_class("sure")


def test_the_precision_constants_are_what_the_committed_benchmark_measured() -> None:
    """`CLASS_PRECISION` (the numeric SSSOM confidence) must come from bench/results/confidence.json."""
    report = json.loads((REPO / "bench" / "results" / "confidence.json").read_text(encoding="utf-8"))
    pooled = pooled_confidence(report)
    assert {name: round(pooled[name]["precision"], 3) for name in CLASS_PRECISION} == CLASS_PRECISION
    assert round(pooled["lower_ranks"]["precision"], 3) == LOWER_RANK_PRECISION
    assert {row["ontology"] for row in report["rows"]} == {"cl", "uberon", "mondo"}
    # the classes mean something: each is more precise than the next, on the pooled sets
    values = [CLASS_PRECISION[name] for name in ("high", "good", "medium", "low")]
    assert values == sorted(values, reverse=True) and values[-1] > LOWER_RANK_PRECISION


def test_matches_carry_their_class(store: Path) -> None:
    client = chromadb.PersistentClient(path=str(store))
    found = match(["B cell", "Tregs", "OPCs", "CD4 TCM"], "cl", top_k=3, client=client)
    assert [(r[0].match_type, r[0].confidence) for r in found] == [
        ("label", "high"), ("synonym", "good"), ("abbreviation", "good"), ("alias", "high")]
    assert all(m.confidence == "low" for r in found for m in r[1:])
    [vector] = match(["lymphocytes that make antibodies"], "cl", top_k=1, client=client)
    assert vector[0].match_type == "vector" and vector[0].confidence in {"medium", "low"}


def test_min_confidence_turns_weaker_matches_into_one_no_match_row_each(
        store: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.delenv(constants.ENV_URL, raising=False)
    monkeypatch.setenv(constants.ENV_PATH, str(store))
    monkeypatch.setenv("ONTOSEARCH_CACHE_DIR", str(tmp_path / "cache"))
    labels = tmp_path / "labels.txt"
    labels.write_text("B cell\nTregs\nzebra stripes\n\nB cell\n", encoding="utf-8")
    out = tmp_path / "out.csv"
    code = annotate.main(["--input", str(labels), "--ontology", "cl", "--output", str(out), "--quiet",
                          "--min-confidence", "good"])
    assert code == 0, capsys.readouterr().err
    with open(out, newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    assert [(r["input"], r["rank"], r["confidence"], r["status"]) for r in rows] == [
        ("B cell", "1", "high", "ok"),
        ("Tregs", "1", "good", "ok"),
        ("zebra stripes", "", "", "no_match"),
        ("", "", "", "error"),
        ("B cell", "1", "high", "ok"),
    ]
    assert "below the minimum confidence good" in rows[2]["error"]
    assert "(vector, confidence" in rows[2]["error"]


def test_a_bad_min_confidence_is_refused_before_any_work(tmp_path: Path,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    labels = tmp_path / "labels.txt"
    labels.write_text("B cell\n", encoding="utf-8")
    code = annotate.main(["--input", str(labels), "--ontology", "cl", "--output", str(tmp_path / "o.csv"),
                          "--min-confidence", "very"])
    err = capsys.readouterr().err
    assert code == 2
    assert "--min-confidence: unknown confidence class 'very'" in err and "Traceback" not in err
    assert not (tmp_path / "o.csv").exists()


def test_the_writer_applies_the_minimum_to_any_match_rows() -> None:
    out = io.StringIO()
    matches = [{"rank": 1, "term_id": "CL:1", "term_label": "x", "score": 0.7, "match_type": "vector",
                "confidence": "medium"},
               {"rank": 2, "term_id": "CL:2", "term_label": "y", "score": 0.6, "match_type": "vector",
                "confidence": "low"}]
    counts = write_rows(out, [(1, "a", None, matches)], ontology="cl", min_confidence="medium")
    lines = list(csv.DictReader(io.StringIO(out.getvalue())))
    assert counts["annotated"] == 1 and [r["term_id"] for r in lines] == ["CL:1"]

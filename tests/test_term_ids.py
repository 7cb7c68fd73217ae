"""Ontology ids as labels, and how each match was found, against the packaged Cell Ontology.

A real Chroma collection of a CL subset (the packaged release's real labels, synonyms and aliases) is
built once per module with MiniLM; obsolete ids are checked against the packaged release's own
`replaced_by` and `consider` entries, which the tests read first so a new release that changes them
fails loudly here rather than silently.
"""

from __future__ import annotations

import csv
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import chromadb
import pytest

from ontosearch import annotate, constants, term_ids
from ontosearch.embedders import get_embedder
from ontosearch.indexing import index_ontology
from ontosearch.matcher import Matcher, match
from ontosearch.ontologies import Ontology, load_ontology
from ontosearch.term_ids import obsolete_terms, parse_term_id

KEYWORDS = ("T cell", "B cell", "oligodendrocyte")
KEEP = {"CL:0000000", "CL:0001034", "CL:0000062", "CL:0000236"}


@pytest.fixture(scope="module")
def ontology() -> Ontology:
    full = load_ontology("cl")
    terms = [t for t in full.terms if t.id in KEEP or any(k in t.label for k in KEYWORDS)]
    kept = {t.id for t in terms}
    terms = [replace(t, parents=tuple(p for p in t.parents if p in kept)) for t in terms]
    return Ontology(name="cl", version=full.version, terms=terms)


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory, ontology: Ontology) -> Path:
    path = tmp_path_factory.mktemp("store")
    index_ontology(chromadb.PersistentClient(path=str(path)), ontology, get_embedder(), progress=False)
    return path


@pytest.fixture(scope="module")
def matcher(store: Path) -> Matcher:
    return Matcher(chromadb.PersistentClient(path=str(store)), "cl")


def test_ids_in_every_written_form_parse_to_the_curie() -> None:
    for text in ("CL:0000236", "CL_0000236", "cl:0000236", " CL:0000236 ", "obo:CL_0000236",
                 "http://purl.obolibrary.org/obo/CL_0000236", "https://purl.obolibrary.org/obo/CL_0000236"):
        assert parse_term_id(text) == "CL:0000236", text
    assert parse_term_id("uberon_0002048") == "UBERON:0002048"
    assert parse_term_id("http://purl.obolibrary.org/obo/CLO_0000019") == "CLO:0000019"


def test_labels_that_only_look_like_ids_are_labels() -> None:
    for text in ("cluster_12", "Cluster_3", "T_1", "CD4:8", "B cells", "CL:", "CL:abc", "CL 0000236", "c_12"):
        assert parse_term_id(text) is None, text


def test_a_live_id_comes_back_as_its_term(matcher: Matcher) -> None:
    forms = ["CL:0000236", "CL_0000236", "http://purl.obolibrary.org/obo/CL_0000236"]
    for form, answer in zip(forms, matcher.match(forms, top_k=3), strict=True):
        assert answer.status == "ok"
        assert [(m.term_id, m.term_label, m.match_type, m.rank, m.confidence) for m in answer] == [
            ("CL:0000236", "B cell", "id", 1, "high")
        ], form
        assert answer[0].matched_text == form


def test_an_obsolete_id_comes_back_as_its_replacement(matcher: Matcher) -> None:
    # The packaged release says so; if a new release changes it, this test must be revisited.
    assert obsolete_terms("cl", matcher._version)["CL:0000054"].replaced_by == "CL:0000062"
    [answer] = matcher.match(["CL:0000054"])
    assert answer.status == "ok"
    got = [(m.term_id, m.term_label, m.match_type, m.confidence) for m in answer]
    assert got == [("CL:0000062", "osteoblast", "replaced_id", "high")]


def test_an_obsolete_id_with_only_consider_terms_gives_them_ranked_with_a_status(matcher: Matcher) -> None:
    table = obsolete_terms("cl", matcher._version)
    entry = table["CL:0000004"]
    assert entry.replaced_by is None
    assert entry.consider == ("CL:0000000", "CL:0000003", "CL:0001034")
    assert table["CL:0000003"].replaced_by == "CL:0000000"  # itself obsolete: counted once, as cell
    [answer] = matcher.match(["CL:0000004"], top_k=5)
    assert answer.status == "consider"
    assert [(m.rank, m.term_id, m.match_type, m.confidence) for m in answer] == [
        (1, "CL:0000000", "replaced_id", "medium"), (2, "CL:0001034", "replaced_id", "low")]
    assert "CL:0000004" in answer.reason and "obsolete" in answer.reason and "CL:0001034" in answer.reason


def test_ids_without_a_term_are_errors_that_say_why(matcher: Matcher) -> None:
    table = obsolete_terms("cl", matcher._version)
    assert not table["CL:0000045"].replaced_by and not table["CL:0000045"].consider
    assert table["CL:0000002"].replaced_by == "CLO:0000019"  # replaced by a term of another ontology
    cases = {
        "CL:9999999": "is not a term of cl",
        "CL:0000045": "names no replacement",
        "CL:0000002": "replaced by CLO:0000019, which this collection does not hold",
        "UBERON:0002048": "is a uberon id, not a cl one",
        "GO:0008150": "is a GO id",
    }
    answers = matcher.match(list(cases))
    for (label, expected), answer in zip(cases.items(), answers, strict=True):
        assert answer.status == "error" and list(answer) == [], label
        assert expected in answer.reason, (label, answer.reason)


def test_without_the_packaged_ontology_an_unknown_id_says_what_to_install(
        store: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The Lambda image carries no cellxgene-ontology-guide: obsolete ids then get a reason, not a crash."""
    monkeypatch.setitem(sys.modules, "zstandard", None)  # an absent module: `import zstandard` fails
    term_ids.obsolete_terms.cache_clear()
    try:
        [answer] = Matcher(chromadb.PersistentClient(path=str(store)), "cl").match(["CL:0000054"])
    finally:
        term_ids.obsolete_terms.cache_clear()
    assert answer.status == "error" and "cellxgene-ontology-guide" in answer.reason


def test_each_match_says_how_it_was_found(store: Path) -> None:
    client = chromadb.PersistentClient(path=str(store))
    labels = ["B cell", "Tregs", "CD4 TCM", "OPCs", "lymphocytes that make antibodies"]
    found = match(labels, "cl", top_k=3, client=client)
    assert [(r[0].term_id, r[0].match_type) for r in found] == [
        ("CL:0000236", "label"),
        ("CL:0000815", "synonym"),
        ("CL:0000904", "alias"),
        ("CL:0002453", "abbreviation"),
        (found[4][0].term_id, "vector"),
    ]
    assert all(m.match_type == "vector" for m in found[0][1:])  # the neighbours after an exact hit


def test_annotate_writes_match_type_and_one_row_set_per_input(
        store: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.delenv(constants.ENV_URL, raising=False)
    monkeypatch.setenv(constants.ENV_PATH, str(store))
    monkeypatch.setenv("ONTOSEARCH_CACHE_DIR", str(tmp_path / "cache"))
    labels = tmp_path / "labels.txt"
    labels.write_text("CL_0000236\nB cells\nCL:0000054\nCL:0000004\nCL:9999999\n", encoding="utf-8")
    out = tmp_path / "out.csv"
    code = annotate.main(["--input", str(labels), "--ontology", "cl", "--top-k", "2", "--output", str(out),
                          "--quiet"])
    assert code == 0, capsys.readouterr().err
    with open(out, newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    got = [(r["input"], r["rank"], r["term_id"], r["match_type"], r["status"]) for r in rows]
    assert got[0] == ("CL_0000236", "1", "CL:0000236", "id", "ok")
    assert got[1][:5] == ("B cells", "1", "CL:0000236", "label", "ok")
    assert got[2][0] == "B cells" and got[2][3] == "vector"
    assert got[3] == ("CL:0000054", "1", "CL:0000062", "replaced_id", "ok")
    assert got[4:6] == [("CL:0000004", "1", "CL:0000000", "replaced_id", "consider"),
                        ("CL:0000004", "2", "CL:0001034", "replaced_id", "consider")]
    assert "obsolete" in rows[4]["error"]
    assert got[6] == ("CL:9999999", "", "", "", "error")
    assert "is not a term of cl" in rows[6]["error"]
    assert len(rows) == 7


def test_answers_stay_answers_when_served_from_the_cache(matcher: Matcher) -> None:
    first = matcher.match(["CL:0000004", "CL:9999999"])
    again: list[Any] = matcher.match(["CL:0000004", "CL:9999999"])
    assert [(a.status, a.reason, list(a)) for a in again] == [(a.status, a.reason, list(a)) for a in first]

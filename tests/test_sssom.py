"""`annotate --output *.sssom.tsv`: an SSSOM mapping set, checked against the SSSOM LinkML schema.

Real Chroma store of a packaged-CL subset with MiniLM; the output is validated with
`sssom_schema_check` (the SSSOM project's schema from the pinned sssom-schema package).
"""

from __future__ import annotations

import csv
from dataclasses import replace
from pathlib import Path

import chromadb
import pytest
from sssom_schema_check import check_sssom_tsv, read_sssom_tsv

import ontosearch
from ontosearch import annotate, constants
from ontosearch.embedders import get_embedder
from ontosearch.indexing import index_ontology
from ontosearch.ontologies import Ontology, load_ontology
from ontosearch.sssom import release_iri

KEYWORDS = ("T cell", "B cell", "oligodendrocyte")
KEEP = {"CL:0000000", "CL:0001034", "CL:0000062", "CL:0000236"}
LABELS = ["B cells", "Tregs", "OPCs", "lymphocytes that make antibodies", "CL:0000054", "CL:0000004",
          "CL:9999999", "", "B cells", "zebra | stripes", "tab\there"]


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    full = load_ontology("cl")
    terms = [t for t in full.terms if t.id in KEEP or any(k in t.label for k in KEYWORDS)]
    kept = {t.id for t in terms}
    subset = Ontology("cl", full.version, [replace(t, parents=tuple(p for p in t.parents if p in kept))
                                           for t in terms])
    path = tmp_path_factory.mktemp("store")
    index_ontology(chromadb.PersistentClient(path=str(path)), subset, get_embedder(), progress=False)
    return path


@pytest.fixture
def local(store: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.delenv(constants.ENV_URL, raising=False)
    monkeypatch.setenv(constants.ENV_PATH, str(store))
    monkeypatch.setenv("ONTOSEARCH_CACHE_DIR", str(tmp_path / "cache"))
    labels = tmp_path / "labels.csv"
    with open(labels, "w", newline="", encoding="utf-8") as handle:
        csv.writer(handle).writerows([["label"], *[[label] for label in LABELS]])
    return labels


def run(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = annotate.main(args)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_sssom_output_conforms_to_the_sssom_schema_and_says_what_it_maps(
        local: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "mappings.sssom.tsv"
    code, _, err = run(["--input", str(local), "--ontology", "cl", "--output", str(out), "--quiet"], capsys)
    assert code == 0, err
    text = out.read_text(encoding="utf-8")
    assert check_sssom_tsv(text) == []
    meta, rows = read_sssom_tsv(text)
    version = load_ontology("cl").version
    assert meta["curie_map"]["CL"] == "http://purl.obolibrary.org/obo/CL_"
    assert meta["subject_type"] == "rdfs literal" and meta["object_source"] == "obo:cl.owl"
    assert meta["mapping_tool"] == "ontosearch" and meta["mapping_tool_version"] == ontosearch.__version__
    assert release_iri("cl", version) in meta["mapping_set_description"]
    assert meta["mapping_set_id"].startswith("https://") and meta["license"].startswith("https://")
    assert {row["object_source_version"] for row in rows} == {
        f"http://purl.obolibrary.org/obo/cl/releases/{version.lstrip('v')}/cl.owl"}

    subjects = list(dict.fromkeys(row["subject_label"] for row in rows))
    # one set of rows per distinct label; the empty one cannot be an SSSOM subject
    assert subjects == ["B cells", "Tregs", "OPCs", "lymphocytes that make antibodies", "CL:0000054",
                        "CL:0000004", "CL:9999999", "zebra | stripes", "tab here"]
    assert "1 rows without a label are not in the SSSOM output" in err
    by_subject = {s: [row for row in rows if row["subject_label"] == s] for s in subjects}
    b_cell = by_subject["B cells"]
    assert [row["other"].split("|")[0] for row in b_cell] == ["rank=1", "rank=2", "rank=3"]
    first = b_cell[0]
    fields = ("predicate_id", "object_id", "object_label", "mapping_justification", "confidence")
    assert [first[field] for field in fields] == [
        "skos:exactMatch", "CL:0000236", "B cell", "semapv:LexicalMatching", "0.982"]
    assert "match_type=label" in first["other"] and "confidence_class=high" in first["other"]
    assert all(row["confidence"] == "0.010" for row in b_cell[1:])  # rows after the first
    vector = by_subject["lymphocytes that make antibodies"][0]
    assert vector["mapping_justification"] == "semapv:SemanticSimilarityThresholdMatching"
    assert 0 < float(vector["similarity_score"]) < 1 and vector["similarity_measure"] == "wikidata:Q1784941"
    [replaced] = by_subject["CL:0000054"]
    assert replaced["object_id"] == "CL:0000062"
    assert replaced["mapping_justification"] == "semapv:MappingChaining"
    consider = by_subject["CL:0000004"]
    assert [row["object_id"] for row in consider] == ["CL:0000000", "CL:0001034"]
    assert {row["predicate_id"] for row in consider} == {"skos:relatedMatch"}
    assert "obsolete" in consider[0]["comment"]
    [unknown] = by_subject["CL:9999999"]
    assert unknown["object_id"] == "sssom:NoTermFound" and "not a term of cl" in unknown["comment"]


def test_format_by_option_to_stdout_and_with_a_minimum_confidence(
        local: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, stdout, err = run(["--input", str(local), "--ontology", "cl", "--output", "-", "--output-format",
                             "sssom", "--min-confidence", "good", "--quiet"], capsys)
    assert code == 0, err
    assert check_sssom_tsv(stdout) == []
    _, rows = read_sssom_tsv(stdout)
    weak = [row for row in rows if row["subject_label"] == "lymphocytes that make antibodies"]
    assert [row["object_id"] for row in weak] == ["sssom:NoTermFound"]
    assert "below the minimum confidence good" in weak[0]["comment"]
    assert [row["object_id"] for row in rows if row["subject_label"] == "B cells"] == ["CL:0000236"]


SAMPLE = """#curie_map:
#  CL: http://purl.obolibrary.org/obo/CL_
#mapping_set_id: https://w3id.org/sssom/mappings/x
#license: https://w3id.org/sssom/license/unspecified
#subject_type: rdfs literal
subject_label\tpredicate_id\tobject_id\tmapping_justification\tconfidence
B cells\tskos:exactMatch\tCL:0000236\tsemapv:LexicalMatching\t0.9
"""


def test_the_schema_check_itself_catches_what_the_schema_forbids() -> None:
    assert check_sssom_tsv(SAMPLE) == []
    broken = {
        "no license": SAMPLE.replace("#license: https://w3id.org/sssom/license/unspecified\n", ""),
        "bad justification": SAMPLE.replace("semapv:LexicalMatching", "semapv:Guessing"),
        "undeclared prefix": SAMPLE.replace("CL:0000236", "XX:0000236"),
        "confidence above 1": SAMPLE.replace("\t0.9\n", "\t1.5\n"),
        "literal without a label": SAMPLE.replace("B cells\t", "\t"),
        "unknown column": SAMPLE.replace("confidence\n", "certainty\n"),
        "unknown metadata": SAMPLE.replace("#license:", "#licence: x\n#license:"),
        "bad entity type": SAMPLE.replace("rdfs literal", "string"),
    }
    for name, text in broken.items():
        assert check_sssom_tsv(text), name

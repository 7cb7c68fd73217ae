"""Parquet label tables in and results out: real files written with pyarrow, a real Chroma store."""

from __future__ import annotations

import csv
import io
from dataclasses import replace
from pathlib import Path

import chromadb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from ontosearch import annotate, constants, parquet_io
from ontosearch.embedders import get_embedder
from ontosearch.indexing import index_ontology
from ontosearch.label_io import RESULT_COLUMNS, LabelFileError, read_labels, write_rows
from ontosearch.ontologies import Ontology, load_ontology


def write_table(path: Path, columns: dict[str, pa.Array], row_group_size: int = 4) -> Path:
    pq.write_table(pa.table(columns), path, row_group_size=row_group_size)
    return path


LABELS = ["B cells", None, "  ", "T cells", "x" * 1200, "B cells", "hepatocytes", "NK cells", "B cell"]


def test_parquet_labels_are_read_batch_by_batch_one_row_per_record(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(parquet_io, "READ_BATCH_ROWS", 3)  # batch boundaries inside and across row groups
    path = write_table(tmp_path / "labels.parquet", {
        "n": pa.array(range(len(LABELS))), "cell_type": pa.array(LABELS, pa.string())})
    rows = list(read_labels(path, column="cell_type"))
    assert [row for row, _, _ in rows] == list(range(1, len(LABELS) + 1))
    assert [(label, error is None) for _, label, error in rows][:4] == [
        ("B cells", True), ("", False), ("", False), ("T cells", True)]
    assert rows[1][2] == "'cell_type' is null, not a label"
    assert rows[2][2] == "empty label"
    assert "over the limit of 1000" in rows[4][2]
    assert [label for _, label, error in rows[5:]] == ["B cells", "hepatocytes", "NK cells", "B cell"]


def test_categorical_and_large_string_columns_are_text_too(tmp_path: Path) -> None:
    path = write_table(tmp_path / "labels.pq", {
        "cats": pa.array(["B cells", "T cells", "B cells"]).dictionary_encode(),
        "big": pa.array(["a", "b", "c"], pa.large_string())})
    assert [label for _, label, _ in read_labels(path)] == ["B cells", "T cells", "B cells"]
    assert [label for _, label, _ in read_labels(path, column="big")] == ["a", "b", "c"]


def test_whole_file_problems_are_one_clear_error_before_any_row(tmp_path: Path) -> None:
    path = write_table(tmp_path / "labels.parquet", {"n": pa.array([1, 2]), "label": pa.array(["a", "b"])})
    with pytest.raises(LabelFileError, match=r"'cell_type' is not in the Parquet file \(columns: 'n', "):
        read_labels(path, column="cell_type")
    with pytest.raises(LabelFileError, match="column 'n' holds int64, not text"):
        read_labels(path)  # the first column is the default
    fake = tmp_path / "fake.parquet"
    fake.write_text("label\nB cells\n", encoding="utf-8")
    with pytest.raises(LabelFileError, match="as Parquet"):
        read_labels(fake)
    with pytest.raises(LabelFileError, match="does not exist"):
        read_labels(tmp_path / "missing.parquet")


def test_parquet_results_hold_the_same_rows_as_csv_with_typed_rank_and_score(tmp_path: Path) -> None:
    matches = [{"rank": 1, "term_id": "CL:0000182", "term_label": "hepatocyte", "score": 1.0,
                "match_type": "synonym", "confidence": "good"},
               {"rank": 2, "term_id": "CL:0019026", "term_label": "periportal hepatocyte", "score": 0.66912,
                "match_type": "vector", "confidence": "low"}]
    rows = [(1, "hepatocytes", None, matches), (2, "", "empty label", []), (3, "zzz", None, [])]
    path = tmp_path / "out.parquet"
    with open(path, "wb") as handle:
        writer = parquet_io.ParquetResultWriter(handle, ontology="cl")
        for row in rows:
            writer.write(*row)
        writer.close()
    table = pq.read_table(path)
    assert tuple(table.schema.names) == RESULT_COLUMNS
    assert table.schema.field("rank").type == pa.int32() and table.schema.field("score").type == pa.float64()
    text = io.StringIO()
    write_rows(text, rows, ontology="cl")
    as_csv = list(csv.DictReader(io.StringIO(text.getvalue())))
    got = table.to_pylist()
    assert [r["rank"] for r in got] == [1, 2, None, None]
    assert [r["score"] for r in got] == [1.0, 0.6691, None, None]
    for parquet_row, csv_row in zip(got, as_csv, strict=True):
        assert {k: v for k, v in parquet_row.items() if k not in ("rank", "score")} == {
            k: v for k, v in csv_row.items() if k not in ("rank", "score")}
    assert writer.counts == {"rows": 3, "annotated": 1, "errors": 1, "no_match": 1}


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    full = load_ontology("cl")
    keywords = ("T cell", "B cell", "hepatocyte", "natural killer")
    terms = [t for t in full.terms if any(k in t.label for k in keywords)]
    kept = {t.id for t in terms}
    subset = Ontology("cl", full.version, [replace(t, parents=tuple(p for p in t.parents if p in kept))
                                           for t in terms])
    path = tmp_path_factory.mktemp("store")
    index_ontology(chromadb.PersistentClient(path=str(path)), subset, get_embedder(), progress=False)
    return path


def test_annotate_reads_and_writes_parquet(store: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.delenv(constants.ENV_URL, raising=False)
    monkeypatch.setenv(constants.ENV_PATH, str(store))
    monkeypatch.setenv("ONTOSEARCH_CACHE_DIR", str(tmp_path / "cache"))
    source = write_table(tmp_path / "cells.parquet", {
        "barcode": pa.array([f"AAAC-{i}" for i in range(len(LABELS))]), "cell_type": pa.array(LABELS)})
    out = tmp_path / "annotations.parquet"
    code = annotate.main(["--input", str(source), "--column", "cell_type", "--ontology", "cl", "--top-k", "2",
                          "--output", str(out), "--quiet"])
    assert code == 0, capsys.readouterr().err
    got = pq.read_table(out).to_pylist()
    firsts = [r for r in got if r["status"] != "ok" or r["rank"] == 1]
    assert [r["input"] for r in firsts] == [
        "B cells", "", "", "T cells", "x" * 200 + "…", "B cells", "hepatocytes", "NK cells", "B cell"]
    assert [r["status"] for r in firsts] == ["ok", "error", "error", "ok", "error", "ok", "ok", "ok", "ok"]
    assert firsts[0]["term_id"] == "CL:0000236" and firsts[0]["match_type"] == "label"
    assert len(got) == 2 * 6 + 3


def test_parquet_output_to_stdout_is_refused_with_a_reason(tmp_path: Path,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    labels = tmp_path / "labels.txt"
    labels.write_text("B cell\n", encoding="utf-8")
    code = annotate.main(["--input", str(labels), "--ontology", "cl", "--output", "-", "--output-format",
                          "parquet"])
    err = capsys.readouterr().err
    assert code == 2 and "parquet output needs a file" in err and "Traceback" not in err
    fake = tmp_path / "fake.parquet"
    fake.write_bytes(b"not parquet at all")
    code = annotate.main(["--input", str(fake), "--ontology", "cl", "--output", str(tmp_path / "o.csv")])
    err = capsys.readouterr().err
    assert code == 2 and "as Parquet" in err and "Traceback" not in err

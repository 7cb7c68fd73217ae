"""label_io: every record of every supported format becomes exactly one (row, label, error).

Pure file handling, no model: fast. The annotate command, the Lambdas and the workflow all read input
through these functions, so the error rows they produce are the same everywhere.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import pytest

from ontosearch.label_io import (
    MAX_LINE_CHARS,
    RESULT_COLUMNS,
    LabelFileError,
    ResultWriter,
    detect_format,
    read_labels,
    write_rows,
)


def _write(path: Path, data: bytes | str) -> Path:
    path.write_bytes(data.encode("utf-8") if isinstance(data, str) else data)
    return path


def test_txt_gives_one_row_per_line_with_reasons_for_bad_lines(tmp_path: Path) -> None:
    data = (b"\xef\xbb\xbfCD4+ T cells\r\n"  # BOM and CRLF
            b"\n"
            b"  hepatocytes  \n"
            b"hepato\xffcytes\n"
            + b"x" * 1500 + b"\n"
            b"   \n"
            b"B cells")  # no final newline
    rows = list(read_labels(_write(tmp_path / "labels.txt", data)))
    assert [r[0] for r in rows] == [1, 2, 3, 4, 5, 6, 7]
    assert rows[0] == (1, "CD4+ T cells", None)
    assert rows[1] == (2, "", "empty label")
    assert rows[2] == (3, "hepatocytes", None)
    assert rows[3][1] == "hepato\ufffdcytes" and "not valid UTF-8 (byte 0xff at character 7)" in rows[3][2]
    assert rows[4][1].endswith("…") and len(rows[4][1]) < 300
    assert "1500 characters, over the limit of 1000" in rows[4][2]
    assert rows[5] == (6, "", "empty label")
    assert rows[6] == (7, "B cells", None)


def test_max_label_chars_is_configurable(tmp_path: Path) -> None:
    path = _write(tmp_path / "l.txt", "short\nlonger label\n")
    assert [e for _, _, e in read_labels(path, max_chars=6)] == [
        None, "label is 12 characters, over the limit of 6; is this the right column?"]


def test_csv_reads_the_first_column_by_default_and_quoted_fields(tmp_path: Path) -> None:
    path = _write(tmp_path / "l.csv", 'cell_type,n\n"CD4-positive, alpha-beta T cell",3\nTregs,4\n,5\n\n')
    assert list(read_labels(path)) == [
        (1, "CD4-positive, alpha-beta T cell", None),
        (2, "Tregs", None),
        (3, "", "empty label"),
        (4, "", "empty row"),
    ]


def test_csv_column_by_header_name(tmp_path: Path) -> None:
    path = _write(tmp_path / "l.csv", "sample,tissue\nS1,lung\nS2\nS3,left ventricle\n")
    assert list(read_labels(path, column="tissue")) == [
        (1, "lung", None),
        (2, "", "row has 1 column(s), no 'tissue'"),
        (3, "left ventricle", None),
    ]


def test_csv_column_missing_from_header_fails_before_any_row(tmp_path: Path) -> None:
    path = _write(tmp_path / "l.csv", "sample,tissue\nS1,lung\n")
    expected = r"column 'organ' is not in the header \(columns: 'sample', 'tissue'\)"
    with pytest.raises(LabelFileError, match=expected):
        next(read_labels(path, column="organ"))


def test_tsv_uses_tabs(tmp_path: Path) -> None:
    path = _write(tmp_path / "l.tsv", "label\tcount\nB cells, naive\t1\nNK cells\t2\n")
    assert list(read_labels(path)) == [(1, "B cells, naive", None), (2, "NK cells", None)]


def test_undecodable_bytes_in_csv_become_an_error_row(tmp_path: Path) -> None:
    path = _write(tmp_path / "l.csv", b"label\nlung\nMa\xe9 cells\nliver\n")  # Latin-1 e-acute
    rows = list(read_labels(path))
    assert [r[0] for r in rows] == [1, 2, 3]
    assert rows[1][1] == "Ma\ufffd cells" and "not valid UTF-8 (byte 0xe9" in rows[1][2]
    assert rows[2] == (3, "liver", None)


def test_jsonl_label_key_and_every_kind_of_bad_line(tmp_path: Path) -> None:
    lines = [
        json.dumps({"label": "Crohn's disease", "sample": "P1"}),
        "{not json",
        "[1, 2]",
        json.dumps({"name": "asthma"}),
        json.dumps({"label": None}),
        "",
        json.dumps({"label": "  NASH "}),
        '{"label": "\\ud83d"}',
    ]
    rows = list(read_labels(_write(tmp_path / "l.jsonl", "\n".join(lines) + "\n")))
    assert [r[0] for r in rows] == list(range(1, 9))
    assert rows[0] == (1, "Crohn's disease", None)
    assert rows[1][1] == "{not json" and rows[1][2].startswith("not valid JSON")
    assert rows[2][2].startswith("not a JSON object")
    assert rows[3][2] == "no 'label' key (keys: name); pass --column to pick the key"
    assert rows[4] == (5, "null", "'label' is null, not a string")
    assert rows[5] == (6, "", "empty line")
    assert rows[6] == (7, "NASH", None)
    assert rows[7][2].startswith("contains an unpaired UTF-16 surrogate")


def test_jsonl_column_picks_another_key(tmp_path: Path) -> None:
    path = _write(tmp_path / "l.jsonl", '{"disease": "asthma"}\n{"label": "x"}\n')
    rows = list(read_labels(path, column="disease"))
    assert rows[0] == (1, "asthma", None)
    assert rows[1][2].startswith("no 'disease' key")


def test_a_runaway_line_is_reported_and_skipped_without_holding_it(tmp_path: Path) -> None:
    path = tmp_path / "big.txt"
    with open(path, "w") as fh:
        fh.write("first\n")
        fh.write("y" * (3 * MAX_LINE_CHARS + 17) + "\n")
        fh.write("last\n")
    rows = list(read_labels(path))
    assert [r[0] for r in rows] == [1, 2, 3]
    assert rows[1][2].startswith("line is longer than") and len(rows[1][1]) < 300
    assert rows[2] == (3, "last", None)


def test_rows_are_read_lazily(tmp_path: Path) -> None:
    path = _write(tmp_path / "l.txt", "".join(f"label {i}\n" for i in range(100_000)))
    rows = read_labels(path)
    assert next(rows) == (1, "label 0", None)
    rows.close()  # closes the file


def test_streams_text_and_binary(tmp_path: Path) -> None:
    assert list(read_labels(io.StringIO("a\nb\n"), "txt")) == [(1, "a", None), (2, "b", None)]
    binary = io.BytesIO(b"label\nB cells\n")
    assert list(read_labels(binary, "csv")) == [(1, "B cells", None)]
    assert not binary.closed  # the caller's stream stays theirs


def test_whole_file_problems_raise_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(LabelFileError, match="does not exist"):
        read_labels(tmp_path / "missing.txt")
    with pytest.raises(LabelFileError, match=r"extension '\.xlsx'"):
        read_labels(_write(tmp_path / "l.xlsx", "x"))
    with pytest.raises(LabelFileError, match="unknown input format 'xml'"):
        read_labels(_write(tmp_path / "l.txt", "x"), fmt="xml")
    with pytest.raises(LabelFileError, match="--column applies to"):
        read_labels(_write(tmp_path / "l2.txt", "x"), column="label")
    with pytest.raises(LabelFileError, match="cannot guess the format of a stream"):
        read_labels(io.StringIO("x"))
    formats = [detect_format(f"a{s}") for s in (".TXT", ".csv", ".tsv", ".jsonl")]
    assert formats == ["txt", "csv", "tsv", "jsonl"]


def test_empty_files_give_no_rows(tmp_path: Path) -> None:
    for name in ("e.txt", "e.csv", "e.tsv", "e.jsonl"):
        assert list(read_labels(_write(tmp_path / name, ""))) == []
    assert list(read_labels(_write(tmp_path / "h.csv", "label\n"))) == []


def test_writer_emits_one_line_per_rank_or_one_error_line_and_counts() -> None:
    out = io.StringIO()
    matches = [
        {"rank": 1, "term_id": "CL:0000182", "term_label": "hepatocyte", "score": 1.0,
         "match_type": "synonym", "confidence": "good"},
        {"rank": 2, "term_id": "CL:0019026", "term_label": "periportal region hepatocyte", "score": 0.66912,
         "match_type": "vector", "confidence": "low"},
    ]
    counts = write_rows(out, [
        (1, "hepatocytes", None, matches),
        (2, "", "empty label", []),
        (3, "zzz", None, []),
    ], ontology="cl")
    assert counts == {"rows": 3, "annotated": 1, "errors": 1, "no_match": 1}
    table = list(csv.reader(io.StringIO(out.getvalue())))
    assert tuple(table[0]) == RESULT_COLUMNS
    assert table[1:] == [
        ["hepatocytes", "cl", "1", "CL:0000182", "hepatocyte", "1.0000", "synonym", "good", "ok", ""],
        ["hepatocytes", "cl", "2", "CL:0019026", "periportal region hepatocyte", "0.6691", "vector", "low",
         "ok", ""],
        ["", "cl", "", "", "", "", "", "", "error", "empty label"],
        ["zzz", "cl", "", "", "", "", "", "", "no_match", "no term found"],
    ]


def test_writer_without_header_for_parts_that_are_concatenated() -> None:
    out = io.StringIO()
    writer = ResultWriter(out, ontology="mondo", header=False)
    writer.write(7, "asthma", "matching failed: server down")
    assert out.getvalue() == "asthma,mondo,,,,,,,error,matching failed: server down\n"

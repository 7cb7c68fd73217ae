"""Reading label files and writing annotation results, shared by `annotate`, the Lambdas and the workflow.

One reader for every entry point means one set of rules for what a row is and what is wrong with it:

- every input record yields exactly one `(row, label, error)` tuple, numbered from 1 in file order
  (for .csv/.tsv the header is not a row); a record that cannot be annotated (empty, too long, not
  UTF-8, bad JSON, missing column) yields an `error` reason instead of being skipped or raising;
- reading streams line by line with a cap on how much of one line is held, so a huge file or a
  runaway line uses bounded memory;
- problems that concern the whole file (unknown format, a --column the header lacks) raise
  `LabelFileError` before any row is read, because no row could be right.

Results are CSV with the columns in `RESULT_COLUMNS`: one row per input row and rank, or one row with
`status=error` (or `no_match`) and a reason.
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import IO, Any

# Text formats: read from any stream (the batch workflow streams them from S3; SUFFIXES is its list).
SUFFIXES = {".txt": "txt", ".csv": "csv", ".tsv": "tsv", ".tab": "tsv", ".jsonl": "jsonl", ".ndjson": "jsonl"}
# Parquet is read by pyarrow from a seekable file (its footer comes last), so only local runs take it.
FILE_SUFFIXES = {**SUFFIXES, ".parquet": "parquet", ".pq": "parquet"}
FORMATS = ("txt", "csv", "tsv", "jsonl", "parquet")
DEFAULT_JSON_KEY = "label"
# Labels are names, not documents; anything longer is almost surely a wrong column or a broken file.
MAX_LABEL_CHARS = 1000
# How much of one physical line is ever held in memory; the rest of a longer line is skipped.
MAX_LINE_CHARS = 1 << 20
# How much of a bad input is echoed into the `input` column of its error row.
ECHO_CHARS = 200

RESULT_COLUMNS = (
    "input", "ontology", "rank", "term_id", "term_label", "score", "match_type", "confidence", "status",
    "error",
)
STATUS_OK = "ok"
STATUS_ERROR = "error"
STATUS_NO_MATCH = "no_match"
# An obsolete id without a replacement: the rows are the terms its ontology suggests considering.
STATUS_CONSIDER = "consider"

Row = tuple[int, str | None, str | None]


class LabelFileError(ValueError):
    """The file as a whole cannot be read as labels; the message says what to change."""


def detect_format(path: str | Path) -> str:
    """The input format named by a file's extension."""
    suffix = Path(path).suffix.lower()
    fmt = FILE_SUFFIXES.get(suffix)
    if fmt is None:
        raise LabelFileError(
            f"cannot tell the format of {str(path)!r} from its extension {suffix or '(none)'!r}; "
            f"use one of {', '.join(sorted(FILE_SUFFIXES))} or pass the format ({', '.join(FORMATS)})"
        )
    return fmt


def publish_file(tmp: str | Path, target: str | Path) -> None:
    """Rename a finished temporary file over `target` with the mode a new file would get.

    Temporary files are made owner-only (`tempfile.mkstemp`); an output should be readable like any
    file the user creates: it keeps the mode of the file it replaces, or else gets 0666 minus the
    process's umask (what `open(path, "w")` would give).
    """
    try:
        mode = os.stat(target).st_mode & 0o7777
    except FileNotFoundError:
        umask = os.umask(0)
        os.umask(umask)
        mode = 0o666 & ~umask
    os.chmod(tmp, mode)
    os.replace(tmp, target)


def _echo(text: str) -> str:
    return text if len(text) <= ECHO_CHARS else text[:ECHO_CHARS] + "…"


def _printable(text: str) -> str:
    """Text safe to write as UTF-8: undecodable bytes and lone surrogates become U+FFFD."""
    if not _has_surrogates(text):
        return text
    return "".join("\ufffd" if "\ud800" <= ch <= "\udfff" else ch for ch in text)


# Any surrogate code point: lone UTF-16 surrogates and the surrogateescape bytes U+DC80..U+DCFF
# alike. Compiled searches, not per-character loops: Split checks every input row.
_ANY_SURROGATE = re.compile("[\ud800-\udfff]")
_ESCAPED_BYTE = re.compile("[\udc80-\udcff]")


def _has_surrogates(text: str) -> bool:
    return _ANY_SURROGATE.search(text) is not None


def _has_escapes(text: str) -> bool:
    """Bytes that were not UTF-8, kept by the surrogateescape handler as U+DC80..U+DCFF."""
    return _ESCAPED_BYTE.search(text) is not None


def check_label(text: str, max_chars: int = MAX_LABEL_CHARS) -> tuple[str, str | None]:
    """(label to use or show, reason it cannot be annotated or None)."""
    label = text.strip()
    if _has_surrogates(label):
        escaped = _ESCAPED_BYTE.search(label)
        if escaped is not None:
            position = escaped.start()
            byte = ord(label[position]) - 0xDC00
            return _echo(_printable(label)), (
                f"not valid UTF-8 (byte 0x{byte:02x} at character {position + 1}); save the file as UTF-8"
            )
        return _echo(_printable(label)), "contains an unpaired UTF-16 surrogate; fix the text of this label"
    if not label:
        return "", "empty label"
    if len(label) > max_chars:
        return _echo(label), (
            f"label is {len(label)} characters, over the limit of {max_chars}; is this the right column?"
        )
    return label, None


def _text_stream(source: str | Path | IO[Any]) -> tuple[IO[str], str]:
    """A text stream over `source` that keeps undecodable bytes visible (surrogateescape).

    Returns (stream, how to release it): "close" for a file we opened, "detach" for a caller's binary
    stream we wrapped (closing the wrapper would close the caller's stream), "" for a caller's text stream.
    """
    if isinstance(source, (str, Path)):
        path = Path(source)
        if not path.is_file():
            raise LabelFileError(f"input file {str(path)!r} does not exist or is not a file")
        raw = open(path, "rb")  # noqa: SIM115 - closed when the rows are exhausted
        return io.TextIOWrapper(raw, encoding="utf-8-sig", errors="surrogateescape", newline=""), "close"
    if isinstance(source, io.TextIOBase):
        return source, ""
    if isinstance(source, (io.BufferedIOBase, io.RawIOBase)):
        return io.TextIOWrapper(source, encoding="utf-8-sig", errors="surrogateescape", newline=""), "detach"
    raise LabelFileError(f"cannot read labels from a {type(source).__name__}; pass a path or a file object")


def _lines(stream: IO[str]) -> Iterator[tuple[str, bool]]:
    """Physical lines without their terminator, each at most MAX_LINE_CHARS; (text, was_cut)."""
    while True:
        line = stream.readline(MAX_LINE_CHARS)
        if not line:
            return
        cut = False
        if not line.endswith(("\n", "\r")) and len(line) >= MAX_LINE_CHARS:
            cut = True
            while True:  # drop the rest of the runaway line
                rest = stream.readline(MAX_LINE_CHARS)
                if not rest or rest.endswith(("\n", "\r")):
                    break
        yield line.rstrip("\r\n"), cut


def _too_long() -> str:
    return f"line is longer than {MAX_LINE_CHARS} characters; is this a label file?"


def _read_txt(stream: IO[str], max_chars: int) -> Iterator[Row]:
    for row, (line, cut) in enumerate(_lines(stream), start=1):
        if cut:
            yield row, _echo(_printable(line)), _too_long()
            continue
        label, error = check_label(line, max_chars)
        yield row, label, error


def _read_jsonl(stream: IO[str], key: str, max_chars: int) -> Iterator[Row]:
    for row, (line, cut) in enumerate(_lines(stream), start=1):
        if cut:
            yield row, _echo(_printable(line)), _too_long()
            continue
        if _has_escapes(line):
            label, error = check_label(line, max_chars)
            yield row, label, error
            continue
        if not line.strip():
            yield row, "", "empty line"
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            yield row, _echo(line.strip()), (
                f"not valid JSON ({exc.msg} at column {exc.colno}); each line must be an object "
                f'like {{"{key}": "..."}}'
            )
            continue
        if not isinstance(record, dict):
            yield row, _echo(line.strip()), f'not a JSON object; each line must look like {{"{key}": "..."}}'
            continue
        if key not in record:
            keys = ", ".join(map(str, list(record)[:10])) or "none"
            yield row, _echo(line.strip()), f"no {key!r} key (keys: {keys}); pass --column to pick the key"
            continue
        value = record[key]
        if not isinstance(value, str):
            shown = "null" if value is None else type(value).__name__
            yield row, _echo(json.dumps(value, ensure_ascii=False)), f"{key!r} is {shown}, not a string"
            continue
        label, error = check_label(value, max_chars)
        yield row, label, error


def _read_table(stream: IO[str], delimiter: str, column: str | None, max_chars: int) -> Iterator[Row]:
    previous = csv.field_size_limit()
    csv.field_size_limit(MAX_LINE_CHARS)
    try:
        reader = csv.reader(stream, delimiter=delimiter)
        try:
            header = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            raise LabelFileError(f"cannot read the header row: {exc}") from None
        header = [name.strip() for name in header]
        if column is None:
            index, name = 0, header[0] if header else "1"
        else:
            if column not in header:
                shown = ", ".join(repr(h) for h in header[:20]) or "none"
                raise LabelFileError(
                    f"column {column!r} is not in the header (columns: {shown}); "
                    "pass one of those to --column"
                )
            index, name = header.index(column), column
        row = 0
        while True:
            try:
                record = next(reader)
            except StopIteration:
                return
            except csv.Error as exc:
                row += 1
                yield row, "", f"cannot parse this row ({exc}); check its quoting"
                continue
            row += 1
            if index >= len(record):
                if not any(field.strip() for field in record):
                    yield row, "", "empty row"
                else:
                    yield row, "", f"row has {len(record)} column(s), no {name!r}"
                continue
            label, error = check_label(record[index], max_chars)
            yield row, label, error
    finally:
        csv.field_size_limit(previous)


def read_labels(
    source: str | Path | IO[Any],
    fmt: str | None = None,
    column: str | None = None,
    max_chars: int = MAX_LABEL_CHARS,
) -> Iterator[Row]:
    """Yield `(row, label, error)` for every record of a label file, lazily.

    `source` is a path or an open stream; `fmt` one of FORMATS (from the path's extension when None);
    `column` picks the .csv/.tsv column by header name (default: the first) or the .jsonl key (default:
    "label"). When `error` is set the row cannot be annotated and `label` is what to echo for it.
    """
    if fmt is None:
        if not isinstance(source, (str, Path)):
            raise LabelFileError(f"cannot guess the format of a stream; pass one of {', '.join(FORMATS)}")
        fmt = detect_format(source)
    fmt = fmt.lower().lstrip(".")
    if fmt not in FORMATS:
        raise LabelFileError(f"unknown input format {fmt!r}; use one of {', '.join(FORMATS)}")
    if column is not None and fmt == "txt":
        raise LabelFileError("--column applies to .csv, .tsv, .jsonl and .parquet; a .txt file has one label "
                             "a line")
    if fmt == "parquet":
        from ontosearch.parquet_io import read_parquet_labels

        if isinstance(source, io.TextIOBase):
            raise LabelFileError("Parquet is binary; pass a path or a binary file object")
        return read_parquet_labels(source, column, max_chars)
    stream, release = _text_stream(source)
    return _generate(stream, release, fmt, column, max_chars)


def _generate(stream: IO[str], release: str, fmt: str, column: str | None, max_chars: int) -> Iterator[Row]:
    try:
        if fmt == "txt":
            yield from _read_txt(stream, max_chars)
        elif fmt == "jsonl":
            yield from _read_jsonl(stream, column or DEFAULT_JSON_KEY, max_chars)
        else:
            yield from _read_table(stream, "," if fmt == "csv" else "\t", column, max_chars)
    finally:
        if release == "close":
            stream.close()
        elif release == "detach":
            stream.detach()


def _field(match: Any, name: str, default: Any = None) -> Any:
    if isinstance(match, dict):
        return match[name] if default is None else match.get(name, default)
    return getattr(match, name) if default is None else getattr(match, name, default)


def result_lines(
    label: str | None,
    ontology: str,
    error: str | None,
    matches: Iterable[Any] = (),
    min_confidence: str | None = None,
) -> tuple[str, list[list[Any]]]:
    """The output lines (RESULT_COLUMNS) of one input row, and which count it adds to
    ("annotated", "errors" or "no_match"): one line per match, or one error / no_match line.

    `matches` may be a matcher `Answer`: its status "error" makes the error line (with its reason),
    "consider" marks its lines and gives them its reason. With `min_confidence`, matches weaker than
    that class are left out; a row left without any gets a no_match line naming its best match.
    Every output format (CSV, Parquet, SSSOM) is written from these lines, so all say the same.
    """
    from ontosearch.confidence import at_least

    text = label or ""
    status = getattr(matches, "status", STATUS_OK)
    if error is None and status == STATUS_ERROR:
        error = getattr(matches, "reason", "") or "no term for this label"
    if error is not None:
        return "errors", [[text, ontology, "", "", "", "", "", "", STATUS_ERROR, error]]
    note = getattr(matches, "reason", "") if status == STATUS_CONSIDER else ""
    found = list(matches)
    kept = found if min_confidence is None else [
        m for m in found if at_least(_field(m, "confidence", ""), min_confidence)
    ]
    if not kept:
        reason = "no term found"
        if found:
            best = found[0]
            how = _field(best, "match_type", "") or "match"
            sure = _field(best, "confidence", "") or "low"
            reason = (
                f"best match {_field(best, 'term_id')} {_field(best, 'term_label')!r} ({how}, confidence "
                f"{sure}) is below the minimum confidence {min_confidence}"
            )
        return "no_match", [[text, ontology, "", "", "", "", "", "", STATUS_NO_MATCH, reason]]
    return "annotated", [[text, ontology, *_match_fields(m), status, note] for m in kept]


def _match_fields(match: Any) -> tuple[Any, ...]:
    """rank, term_id, term_label, score (4 decimals), match_type, confidence of a Match or a dict."""
    if isinstance(match, dict):
        return (match["rank"], match["term_id"], match["term_label"], f"{float(match['score']):.4f}",
                match.get("match_type", ""), match.get("confidence", ""))
    return (match.rank, match.term_id, match.term_label, f"{float(match.score):.4f}",
            getattr(match, "match_type", ""), getattr(match, "confidence", ""))


class ResultWriter:
    """Writes result rows as CSV and counts them; one instance per output file.

    `extra_columns` are appended to RESULT_COLUMNS and `write` then takes their values per input
    row (the AnnData path adds `n_rows`, how many cells carry the label).
    """

    def __init__(
        self,
        handle: IO[str],
        ontology: str = "",
        header: bool = True,
        min_confidence: str | None = None,
        extra_columns: tuple[str, ...] = (),
    ) -> None:
        self._minimal = csv.writer(handle, lineterminator="\n")
        # The csv module quotes only the delimiter, the quote character and the line terminator's
        # characters; a bare CR in a label would split its row when read back, so such rows are quoted.
        self._quoted = csv.writer(handle, lineterminator="\n", quoting=csv.QUOTE_ALL)
        self.ontology = ontology
        self.min_confidence = min_confidence
        self.extra_columns = tuple(extra_columns)
        self.counts = {"rows": 0, "annotated": 0, "errors": 0, "no_match": 0}
        if header:
            self._minimal.writerow(RESULT_COLUMNS + self.extra_columns)

    def _writerows(self, lines: list[list[Any]]) -> None:
        if any("\r" in str(field) for line in lines for field in line):
            self._quoted.writerows(lines)
        else:
            self._minimal.writerows(lines)

    def write(
        self, row: int, label: str | None, error: str | None, matches: Iterable[Any] = (),
        extra: Sequence[Any] = (),
    ) -> None:
        """All output lines of one input row (see `result_lines`)."""
        kind, lines = result_lines(label, self.ontology, error, matches, self.min_confidence)
        self.counts["rows"] += 1
        self.counts[kind] += 1
        if self.extra_columns:
            lines = [[*line, *extra] for line in lines]
        self._writerows(lines)


def write_rows(
    handle: IO[str],
    rows: Iterable[tuple[int, str | None, str | None, Iterable[Any]]],
    ontology: str = "",
    header: bool = True,
    min_confidence: str | None = None,
) -> dict[str, int]:
    """Write `(row, label, error, matches)` tuples as result CSV; returns rows/annotated/errors/no_match."""
    writer = ResultWriter(handle, ontology=ontology, header=header, min_confidence=min_confidence)
    for row, label, error, matches in rows:
        writer.write(row, label, error, matches)
    return writer.counts

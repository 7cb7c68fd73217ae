"""Parquet label tables in, annotation results out, streamed like the CSV path (pyarrow).

Large label tables (every cell of an atlas, a sample sheet export) are often Parquet. Reading goes
one record batch at a time (`ParquetFile.iter_batches`, only the label column is decoded), so
memory stays bounded for any file size; writing buffers `WRITE_BATCH_ROWS` result rows per row
group. The rules are those of `label_io`: one `(row, label, error)` per record, a null or bad value
is an error row, and what concerns the whole file (not Parquet, no such column, a column that
does not hold text) raises `LabelFileError` before any row.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import IO, Any

from ontosearch.label_io import (
    MAX_LABEL_CHARS,
    RESULT_COLUMNS,
    LabelFileError,
    Row,
    check_label,
    result_lines,
)

READ_BATCH_ROWS = 8192
WRITE_BATCH_ROWS = 8192


def _types() -> tuple[Any, Any, Any]:
    import pyarrow
    import pyarrow.parquet

    return pyarrow, pyarrow.parquet, pyarrow.types


def _open(source: str | Path | IO[bytes]) -> Any:
    pa, pq, _ = _types()
    if isinstance(source, (str, Path)) and not Path(source).is_file():
        raise LabelFileError(f"input file {str(source)!r} does not exist or is not a file")
    try:
        return pq.ParquetFile(source)
    except (pa.ArrowInvalid, OSError) as exc:
        raise LabelFileError(f"cannot read {getattr(source, 'name', source)!s} as Parquet ({exc}); is it "
                             "a Parquet file? Pass --format for another format") from None


def read_parquet_labels(
    source: str | Path | IO[bytes], column: str | None = None, max_chars: int = MAX_LABEL_CHARS
) -> Iterator[Row]:
    """Yield `(row, label, error)` for every record of a Parquet file's `column` (default: the first)."""
    _, _, types = _types()
    parquet = _open(source)
    schema = parquet.schema_arrow
    names = list(schema.names)
    if not names:
        raise LabelFileError("the Parquet file has no columns")
    if column is None:
        column = names[0]
    elif column not in names:
        shown = ", ".join(repr(name) for name in names[:20])
        raise LabelFileError(f"column {column!r} is not in the Parquet file (columns: {shown}); pass one of "
                             "those to --column")
    kind = schema.field(column).type
    if types.is_dictionary(kind):
        kind = kind.value_type
    if not (types.is_string(kind) or types.is_large_string(kind)):
        raise LabelFileError(f"column {column!r} holds {kind}, not text; pass the column of labels to "
                             "--column")
    return _generate(parquet, column, max_chars)


def _generate(parquet: Any, column: str, max_chars: int) -> Iterator[Row]:
    row = 0
    try:
        for batch in parquet.iter_batches(batch_size=READ_BATCH_ROWS, columns=[column]):
            for value in batch.column(0).to_pylist():
                row += 1
                if value is None:
                    yield row, "", f"{column!r} is null, not a label"
                    continue
                label, error = check_label(value, max_chars)
                yield row, label, error
    finally:
        parquet.close()


def result_schema(extra: Sequence[tuple[str, str]] = ()) -> Any:
    """Arrow schema of the results: RESULT_COLUMNS with rank and score typed, then `extra` columns
    as (name, "int64" | "string")."""
    pa, _, _ = _types()
    typed = {"rank": pa.int32(), "score": pa.float64()}
    fields = [pa.field(name, typed.get(name, pa.string())) for name in RESULT_COLUMNS]
    fields += [pa.field(name, pa.int64() if kind == "int64" else pa.string()) for name, kind in extra]
    return pa.schema(fields)


class ParquetResultWriter:
    """Writes result rows as Parquet and counts them; same `write` as `label_io.ResultWriter`.

    Rows are written a row group at a time; `close()` writes the rest and the footer (without it
    the file is not readable), so callers close before they rename the file into place.
    """

    def __init__(
        self,
        handle: IO[bytes],
        ontology: str = "",
        min_confidence: str | None = None,
        extra_columns: Sequence[tuple[str, str]] = (),
    ) -> None:
        _, pq, _ = _types()
        self.ontology = ontology
        self.min_confidence = min_confidence
        self.extra_columns = tuple(extra_columns)
        self.schema = result_schema(self.extra_columns)
        self.counts = {"rows": 0, "annotated": 0, "errors": 0, "no_match": 0}
        self._writer = pq.ParquetWriter(handle, self.schema)
        self._buffer: list[list[Any]] = []

    def write(self, row: int, label: str | None, error: str | None, matches: Iterable[Any] = (),
              extra: Sequence[Any] = ()) -> None:
        kind, lines = result_lines(label, self.ontology, error, matches, self.min_confidence)
        self.counts["rows"] += 1
        self.counts[kind] += 1
        for line in lines:
            rank, score = line[2], line[5]
            line[2] = int(rank) if rank not in ("", None) else None
            line[5] = float(score) if score not in ("", None) else None
            self._buffer.append([*line, *extra])
        if len(self._buffer) >= WRITE_BATCH_ROWS:
            self._flush()

    def _flush(self) -> None:
        if not self._buffer:
            return
        pa, _, _ = _types()
        columns = list(zip(*self._buffer, strict=True))
        self._writer.write_table(pa.Table.from_arrays(
            [pa.array(values, type=field.type) for values, field in zip(columns, self.schema, strict=True)],
            schema=self.schema,
        ))
        self._buffer.clear()

    def close(self) -> None:
        self._flush()
        self._writer.close()

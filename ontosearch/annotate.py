"""`python -m ontosearch annotate`: a file of free-text labels in, ranked ontology terms out.

The project's main job on a laptop. Where the vectors come from, in order:
- `--snapshot DIR`: a built snapshot, restored once into the per-user cache and opened embedded;
- `CHROMA_URL` set: the remote server (through its auth proxy, token from the environment);
- otherwise the embedded default store (`CHROMA_PATH` or the per-user default); on first use the
  ontology's collection is built there from the packaged ontology, with progress shown.

The input is streamed in chunks (bounded memory for any file size). Every input row gives output rows:
one per rank, or one `status=error` row saying why it could not be annotated; a chunk the server fails
on is reported the same way, so the output always accounts for every input row. The output is written
to a temporary file and renamed into place at the end, so OUT never holds a half-written result.
"""

from __future__ import annotations

import argparse
import csv
import itertools
import os
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

from ontosearch import constants
from ontosearch.label_io import (
    FORMATS,
    MAX_LABEL_CHARS,
    MAX_LINE_CHARS,
    RESULT_COLUMNS,
    LabelFileError,
    ResultWriter,
    detect_format,
    publish_file,
    read_labels,
)
from ontosearch.sigterm import sigterm_raises

DEFAULT_TOP_K = 3
MAX_TOP_K = 100
DEFAULT_CHUNK_ROWS = 4096
# After this many chunks in a row fail on the server, stop trying and mark the remaining rows.
MAX_FAILED_CHUNKS = 3
# Name prefix of a collection still being built (find_collection only looks at `<ontology>_*`).
STAGING_PREFIX = "building-"
# Lock file in the local store: concurrent runs open (and on first use build) it one at a time.
STORE_LOCK_NAME = ".ontosearch-build.lock"


OUTPUT_FORMATS = ("csv", "sssom", "parquet")
BINARY_OUTPUTS = ("parquet",)


def output_format(path: str, fmt: str | None) -> str:
    """The output format: `fmt` if given, else from the file name (`*.sssom.tsv` is SSSOM,
    `*.parquet` Parquet, anything else CSV)."""
    if fmt is not None:
        return fmt
    name = path.lower()
    if name.endswith(".sssom.tsv"):
        return "sssom"
    return "parquet" if name.endswith((".parquet", ".pq")) else "csv"


def result_writer(fmt: str, handle: IO[Any], ontology: str, collection: Any, embedder: Any,
                  min_confidence: str | None, counted: bool = False) -> Any:
    """The writer for `fmt`; SSSOM needs the collection's ontology release and the embedder. A
    writer with a `close()` (Parquet) must be closed before the output is moved into place.
    `counted`: rows are distinct labels and CSV/Parquet gain the `n_rows` column (AnnData input)."""
    from ontosearch.anndata_io import N_ROWS_COLUMN

    if fmt == "parquet":
        from ontosearch.parquet_io import ParquetResultWriter

        return ParquetResultWriter(handle, ontology=ontology, min_confidence=min_confidence,
                                   extra_columns=[(N_ROWS_COLUMN, "int64")] if counted else ())
    if fmt == "sssom":
        from ontosearch import __version__
        from ontosearch.sssom import SssomWriter

        version = (collection.metadata or {}).get("version", "")
        return SssomWriter(handle, ontology, version, __version__, embedder=embedder.name,
                           min_confidence=min_confidence)
    return ResultWriter(handle, ontology=ontology, min_confidence=min_confidence,
                        extra_columns=(N_ROWS_COLUMN,) if counted else ())


def _h5ad_groups(args: argparse.Namespace) -> tuple[list[Any], Any]:
    """The distinct labels of the .h5ad input's obs column and each cell's index into them."""
    from ontosearch.anndata_io import AnnDataError, group_labels, read_obs_column

    if not args.column:
        raise AnnotateError("an .h5ad input needs --column: the obs column that holds the labels "
                            "(for example --column cell_type)")
    source = Path(args.input).expanduser()
    if args.h5ad_out:
        _check_h5ad_out(args.h5ad_out, source, args.output)
    try:
        return group_labels(read_obs_column(source, args.column), args.column, args.max_label_chars)
    except AnnDataError as exc:
        raise AnnotateError(str(exc)) from None


def _write_h5ad_copy(args: argparse.Namespace, writer: Any, cells: Any, ontology: str,
                     min_confidence: str | None) -> str:
    """Writes --h5ad-out; returns a summary line."""
    from ontosearch.anndata_io import (
        AnnDataError,
        cell_columns,
        first_terms,
        schema_columns,
        write_annotated_copy,
    )

    id_column, label_column = schema_columns(ontology)
    terms = first_terms(writer.groups, writer.answers, ontology, min_confidence)
    ids, names = cell_columns(terms, cells)
    try:
        write_annotated_copy(Path(args.input).expanduser(), Path(args.h5ad_out).expanduser(),
                             {id_column: ids, label_column: names})
    except AnnDataError as exc:
        raise AnnotateError(str(exc)) from None
    except OSError as exc:
        raise AnnotateError(f"--h5ad-out {args.h5ad_out}: cannot write the annotated copy: "
                            f"{exc.strerror or exc}") from None
    annotated = sum(group.n_rows for group, (term_id, _) in zip(writer.groups, terms, strict=True)
                    if term_id not in (None, "unknown"))
    return (f"annotate: {len(cells)} cells, {annotated} with a term in {id_column} and {label_column} "
            f"-> {args.h5ad_out}")


def _check_h5ad_out(h5ad_out: str, source: Path, output: str) -> None:
    """Refuses an --h5ad-out path the copy could not take, before any slow set-up: the copy is
    written last, after the matching and the result file."""
    target = Path(h5ad_out).expanduser()
    if target.resolve() == source.resolve():
        raise AnnotateError("--h5ad-out would overwrite the input; give another path for the annotated copy")
    if output != "-" and target.resolve() == Path(output).expanduser().resolve():
        raise AnnotateError("--h5ad-out and --output name the same file; give the annotated copy a path of "
                            "its own, such as annotated.h5ad")
    if target.is_dir():
        raise AnnotateError(f"--h5ad-out {h5ad_out} is a directory; give a file name such as "
                            f"{target / 'annotated.h5ad'}")
    parent = target.parent if str(target.parent) else Path(".")
    if not parent.is_dir():
        raise AnnotateError(f"--h5ad-out {h5ad_out}: directory {parent} does not exist; create it first")


def _check_output(path: str) -> None:
    """Refuses an --output path that cannot be written, before any slow set-up (a first run builds
    the local index first)."""
    if path == "-":
        return
    target = Path(path).expanduser()
    if target.is_dir():
        raise AnnotateError(f"--output {path} is a directory; give a file name such as {target / 'out.csv'}")
    parent = target.parent if str(target.parent) else Path(".")
    if not parent.is_dir():
        raise AnnotateError(f"--output {path}: directory {parent} does not exist; create it first")


def _first_column_note(path: Path, fmt: str | None) -> str | None:
    """A note naming the column read when a table of several columns comes without --column: the
    first column of a sample sheet or an exported obs table is often an id, not the labels."""
    try:
        fmt = (fmt or detect_format(path)).lower()
        if fmt == "parquet":
            import pyarrow.parquet as pq

            names = list(pq.read_schema(path).names)
        elif fmt in ("csv", "tsv"):
            with open(path, encoding="utf-8-sig", errors="replace", newline="") as handle:
                first = handle.readline(MAX_LINE_CHARS)
            header = next(csv.reader([first], delimiter="," if fmt == "csv" else "\t"), [])
            names = [name.strip() for name in header]
        else:
            return None
    except (OSError, ValueError, csv.Error):  # the reader itself reports what is wrong with the file
        return None
    if len(names) < 2:
        return None
    shown = ", ".join(repr(name) for name in names[:10]) + (", ..." if len(names) > 10 else "")
    return (f"note: no --column given, so the labels are read from the first of {len(names)} columns, "
            f"{names[0]!r} ({shown}); pass --column to choose another")


class AnnotateError(RuntimeError):
    """A problem with the run as a whole (arguments, store, server); exits non-zero with the message."""


def _err(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m ontosearch annotate",
        description="Annotate free-text labels (cell types, tissues, diseases) with ontology terms.",
        epilog=(
            f"Output columns: {','.join(RESULT_COLUMNS)}: one row per "
            "input row and rank, or one row with status=error and the reason. Uses CHROMA_URL (+ "
            "CHROMA_TOKEN) when set, else the local store (CHROMA_PATH), built on first use."
        ),
    )
    parser.add_argument("--input", required=True,
                        help="labels: .txt (one a line), .csv/.tsv, .jsonl, .parquet, or an AnnData .h5ad "
                        "(with --column naming the obs column; one set of rows per distinct label)")
    parser.add_argument("--ontology", required=True,
                        help="cl, uberon, mondo or an alias (cell_type, tissue, disease)")
    parser.add_argument("--output", required=True,
                        help="result path (.csv; .sssom.tsv for SSSOM; .parquet), or - for standard output")
    parser.add_argument("--output-format", choices=OUTPUT_FORMATS, default=None,
                        help="csv, sssom (an SSSOM mapping set) or parquet; default: from --output's name")
    parser.add_argument("--top-k", type=int, default=DEFAULT_TOP_K,
                        help=f"terms per label (default {DEFAULT_TOP_K})")
    parser.add_argument("--column", help="CSV/TSV header name or Parquet column (default: the first), "
                        "JSONL key (default: label) or .h5ad obs column (required)")
    parser.add_argument("--format", choices=(*FORMATS, "h5ad"),
                        help="input format (default: from the extension)")
    parser.add_argument("--h5ad-out", metavar="PATH", default=None,
                        help="with an .h5ad input: write a copy whose obs gains the CELLxGENE term id column "
                        "(cell_type_ontology_term_id, tissue_..., disease_...) and a label column for every "
                        "cell")
    parser.add_argument("--snapshot", help="snapshot directory (manifest.json + archive) to annotate against")
    parser.add_argument("--embedder", default=None,
                        help="embedder for building the local index on first use "
                        f"(default {constants.DEFAULT_EMBEDDER}); queries use the index's own")
    parser.add_argument("--chunk-rows", type=int, default=DEFAULT_CHUNK_ROWS,
                        help=f"rows matched per batch (default {DEFAULT_CHUNK_ROWS})")
    parser.add_argument("--max-label-chars", type=int, default=MAX_LABEL_CHARS,
                        help=f"longer labels get an error row (default {MAX_LABEL_CHARS})")
    parser.add_argument("--min-confidence", metavar="CLASS", default=None,
                        help="leave out matches weaker than CLASS (high, good, medium, low; see "
                        "`confidence` in the output); a label left without any gets a status=no_match row")
    parser.add_argument("--quiet", action="store_true", help="no progress output (the summary still prints)")
    return parser


def snapshot_store(snapshot_dir: Path, log: Any = _err) -> Path:
    """Restore a snapshot directory once into the per-user cache; returns the persist directory."""
    from ontosearch.embedders import cache_dir
    from ontosearch.manifest import Manifest, ManifestError
    from ontosearch.restore import RestoreError, restore_from_dir

    if not snapshot_dir.is_dir():
        raise AnnotateError(f"--snapshot {snapshot_dir} is not a directory; pass the directory that holds "
                            f"{constants.MANIFEST_NAME} and the archive")
    try:
        manifest = Manifest.load(snapshot_dir)
    except (ManifestError, OSError) as exc:
        raise AnnotateError(f"--snapshot {snapshot_dir}: {exc}") from None
    into = cache_dir() / "snapshots" / manifest.archive.sha256[:16]
    try:
        restore_from_dir(snapshot_dir, into, log=log)
    except (RestoreError, ManifestError, OSError) as exc:
        raise AnnotateError(f"cannot use snapshot {snapshot_dir}: {exc}") from None
    return into


def open_client(args: argparse.Namespace, ontology: str, progress: bool) -> tuple[Any, str]:
    """(client, where) for this run; builds the local collection on first use."""
    from ontosearch.connect import ConnectError, connect
    from ontosearch.matcher import MatcherError, find_collection

    try:
        if args.snapshot:
            path = snapshot_store(Path(args.snapshot).expanduser())
            return connect(path=path), f"snapshot {args.snapshot}"
        if os.environ.get(constants.ENV_URL):
            return connect(), f"server {os.environ[constants.ENV_URL]}"
    except ConnectError as exc:
        raise AnnotateError(str(exc)) from None
    store = Path(os.environ.get(constants.ENV_PATH) or _default_path())
    # One run at a time opens (and on first use creates and fills) the local store: Chroma's own
    # set-up of a new store is not safe against a second process doing the same, and a second run
    # should find the first one's collection rather than build another.
    with _store_lock(store):
        try:
            client = connect()
        except ConnectError as exc:
            raise AnnotateError(str(exc)) from None
        try:
            find_collection(client, ontology)
        except MatcherError:
            build_local(client, ontology, args.embedder, progress)
    return client, f"local store {store}"


@contextmanager
def _store_lock(store: Path) -> Iterator[None]:
    """An exclusive lock on the store's lock file (released when the process ends, too)."""
    import fcntl

    store.mkdir(parents=True, exist_ok=True)
    with open(store / STORE_LOCK_NAME, "a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            _err(f"annotate: another run is opening or building the local store {store}; waiting for it")
            fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _default_path() -> Path:
    from ontosearch.connect import default_local_path

    return default_local_path()


def build_local(client: Any, ontology: str, embedder_name: str | None, progress: bool) -> None:
    """First use: index the packaged ontology into the embedded store.

    The collection is filled under a staging name and renamed when complete, so a build that is
    interrupted never leaves a half-filled collection that later runs would take for the real one.
    """
    from ontosearch.embedders import get_embedder
    from ontosearch.indexing import collection_name, index_ontology
    from ontosearch.ontologies import load_ontology

    started = time.monotonic()
    onto = load_ontology(ontology)
    _err(f"annotate: first use of {ontology}: building the local index of {onto.name} {onto.version} "
         f"({len(onto.terms)} terms); later runs reuse it")
    embedder = get_embedder(embedder_name)
    final = collection_name(onto.name, onto.version)
    staging = STAGING_PREFIX + final
    entry = index_ontology(client, onto, embedder, progress=progress, name=staging)
    client.get_collection(staging, embedding_function=None).modify(name=final)
    took = time.monotonic() - started
    _err(f"annotate: built {final} ({entry['records']} vectors) in {took:.0f} s")


@contextmanager
def _output(path: str, binary: bool = False) -> Iterator[IO[Any]]:
    """Standard output, or a temporary file renamed over `path` only when the run completes."""
    if path == "-":
        yield sys.stdout
        sys.stdout.flush()
        return
    _check_output(path)
    target = Path(path).expanduser()
    parent = target.parent if str(target.parent) else Path(".")
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=parent)
    try:
        with (os.fdopen(fd, "wb") if binary else os.fdopen(fd, "w", encoding="utf-8", newline="")) as handle:
            yield handle
        publish_file(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _chunks(rows: Iterator[tuple[int, str | None, str | None]], size: int
            ) -> Iterator[list[tuple[int, str | None, str | None]]]:
    chunk: list[tuple[int, str | None, str | None]] = []
    for row in rows:
        chunk.append(row)
        if len(chunk) >= size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def annotate_stream(
    rows: Iterator[tuple[int, str | None, str | None]],
    writer: ResultWriter,
    ontology: str,
    top_k: int,
    client: Any,
    chunk_rows: int = DEFAULT_CHUNK_ROWS,
    bar: Any = None,
    embedder: Any = None,
) -> int:
    """Match and write every row; returns how many chunks the server failed on.

    One `Matcher` serves the whole run, so a label repeated anywhere in the file is matched once
    and records fetched for one chunk are not fetched again for the next.
    """
    from ontosearch.matcher import Matcher

    matcher: Matcher | None = None
    failed_in_a_row = 0
    failed = 0
    give_up: str | None = None
    for chunk in _chunks(rows, max(1, chunk_rows)):
        labels = [label for _, label, error in chunk if error is None and label]
        found: dict[str, Any] = {}
        chunk_error: str | None = give_up
        if labels and give_up is None:
            try:
                if matcher is None:
                    matcher = Matcher(client, ontology, embedder=embedder)
                results = matcher.match(labels, top_k=top_k)
                found = dict(zip(labels, results, strict=True))
                failed_in_a_row = 0
            except Exception as exc:  # noqa: BLE001 - reported on the rows, never dropped
                failed += 1
                failed_in_a_row += 1
                chunk_error = f"matching failed: {type(exc).__name__}: {exc}"
                _err(f"annotate: rows {chunk[0][0]}-{chunk[-1][0]}: {chunk_error}")
                if failed_in_a_row >= MAX_FAILED_CHUNKS:
                    give_up = f"not attempted after {failed_in_a_row} failed batches ({exc})"
                    _err(f"annotate: giving up on matching; remaining rows are marked: {give_up}")
        for row, label, error in chunk:
            if error is None and chunk_error is not None:
                error = chunk_error
            writer.write(row, label, error, found.get(label, []) if error is None else [])
        if bar is not None:
            bar.update(len(chunk))
    return failed


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    # SIGTERM (a container stop, `kill`) cleans up like Ctrl-C: no temp file left behind.
    try:
        with sigterm_raises():
            return run(args)
    except (AnnotateError, LabelFileError) as exc:
        _err(f"annotate: {exc}")
        return 2
    except KeyboardInterrupt:
        _err("annotate: interrupted; no output written")
        return 130


def run(args: argparse.Namespace) -> int:
    from ontosearch.matcher import MatcherError, check_embedder, find_collection
    from ontosearch.ontologies import OntologyError, resolve_ontology

    started = time.monotonic()
    try:
        ontology = resolve_ontology(args.ontology)
    except OntologyError as exc:
        raise AnnotateError(str(exc)) from None
    if not 1 <= args.top_k <= MAX_TOP_K:
        raise AnnotateError(f"--top-k must be between 1 and {MAX_TOP_K}, got {args.top_k}")
    if args.chunk_rows < 1:
        raise AnnotateError(f"--chunk-rows must be at least 1, got {args.chunk_rows}")
    if args.max_label_chars < 1:
        raise AnnotateError(f"--max-label-chars must be at least 1, got {args.max_label_chars}")
    min_confidence = None
    if args.min_confidence is not None:
        from ontosearch.confidence import ConfidenceError, check_class

        try:
            min_confidence = check_class(args.min_confidence)
        except ConfidenceError as exc:
            raise AnnotateError(f"--min-confidence: {exc}") from None
    fmt = output_format(args.output, args.output_format)
    if fmt in BINARY_OUTPUTS and args.output == "-":
        raise AnnotateError(f"{fmt} output needs a file: give --output a path such as out.{fmt} "
                            "(standard output takes CSV or SSSOM)")
    h5ad = args.format == "h5ad" or (args.format is None and args.input.lower().endswith(".h5ad"))
    if args.h5ad_out and not h5ad:
        raise AnnotateError("--h5ad-out needs an .h5ad --input (it writes an annotated copy of that file)")
    _check_output(args.output)
    # Check the input before any slow setup, so a typo fails at once.
    groups: list[Any] = []
    cells = None
    if h5ad:
        groups, cells = _h5ad_groups(args)
        rows: Iterator[Any] = iter([(row, group.label, group.error) for row, group in enumerate(groups, 1)])
    else:
        rows = read_labels(Path(args.input).expanduser(), args.format, args.column, args.max_label_chars)
        first = next(rows, None)  # a --column missing from the header raises here
        rows = itertools.chain([] if first is None else [first], rows)
        note = None if args.column else _first_column_note(Path(args.input).expanduser(), args.format)
        if note:
            _err(f"annotate: {note}")
    progress = not args.quiet

    client, where = open_client(args, ontology, progress)
    try:
        collection = find_collection(client, ontology)
        embedder = check_embedder(collection, None)
    except MatcherError as exc:
        raise AnnotateError(str(exc)) from None
    if args.embedder and args.embedder != embedder.name:
        _err(f"annotate: note: {collection.name} was built with {embedder.name}, which its queries must use; "
             f"--embedder {args.embedder} only applies when a first use builds the index")
    if progress:
        _err(f"annotate: {args.input} against {collection.name} ({where}), embedder {embedder.name}")

    setup = time.monotonic() - started
    begun = time.monotonic()
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(desc="annotating", unit="label", file=sys.stderr, disable=None)
    try:
        with _output(args.output, binary=fmt in BINARY_OUTPUTS) as handle:
            writer = result_writer(fmt, handle, ontology, collection, embedder, min_confidence, counted=h5ad)
            if h5ad:
                from ontosearch.anndata_io import GroupWriter

                writer = GroupWriter(writer, groups)
            failed = annotate_stream(rows, writer, ontology, args.top_k, client, args.chunk_rows, bar,
                                     embedder=embedder)
            if hasattr(writer, "close"):
                writer.close()
    finally:
        if bar is not None:
            bar.close()
    elapsed = time.monotonic() - begun
    counts = writer.counts
    rate = counts["rows"] / elapsed if elapsed > 0 else 0.0
    summary = (
        f"annotate: {counts['rows']} rows, {counts['annotated']} annotated, {counts['errors']} errors, "
        f"{counts['no_match']} without a match; {rate:.0f} labels/s ({elapsed:.1f} s, setup {setup:.1f} s)"
        f" -> {args.output if args.output != '-' else 'stdout'}"
    )
    print(summary, file=sys.stderr if args.output == "-" else sys.stdout, flush=True)
    if counts.get("skipped"):
        _err(f"annotate: {counts['skipped']} rows without a label are not in the SSSOM output (SSSOM needs a "
             "subject_label); write CSV to see them with their reasons")
    if args.h5ad_out:
        print(_write_h5ad_copy(args, writer, cells, ontology, min_confidence), flush=True,
              file=sys.stderr if args.output == "-" else sys.stdout)
    return 1 if failed else 0

"""`build-snapshot`: index ontologies into a fresh persist directory, archive it, prove it opens.

Why the indexing runs in a child process: an embedded client has no reliable close (reopen-after-
restart bugs #7090, #7463); a child that exits has released everything, and since collections are
built with the smallest `hnsw:sync_threshold` (`ontosearch.indexing.HNSW_METADATA`) their HNSW index
is on disk as built, so the directory archived is exactly what a new server will read. Why the
archive is verified with a separate `chroma run`: that is how the task opens it; the archive is
unpacked by the very restore code the task runs (checksum, members, catalogue), served by a fresh
server, and every collection is counted and queried before the manifest is written. No manifest,
no snapshot: a failed build leaves nothing that looks usable.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import shutil
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from ontosearch.archive import (
    ArchiveError,
    archive_file_name,
    available_compressions,
    create_archive,
    directory_bytes,
)
from ontosearch.constants import CHROMA_VERSION, MANIFEST_NAME, ONTOLOGIES, SNAPSHOT_FORMAT_VERSION
from ontosearch.manifest import ArchiveInfo, CollectionInfo, Manifest, ManifestError, utc_now_iso
from ontosearch.sigterm import sigterm_raises

Log = Callable[[str], None]


class BuildError(RuntimeError):
    """The snapshot could not be built or did not pass verification."""


def _stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _index_worker(
    persist_dir: str,
    sources: list[Any],
    versions: dict[str, str],
    obo_paths: dict[str, str],
    embedder_name: str | None,
    synonyms: bool,
    progress: bool,
    result_path: str,
) -> None:
    """Child process: load, embed and index every ontology, then exit (which flushes Chroma).

    Embedding runs in `EmbedderPool` worker processes (one single-thread session per core) that work
    ahead while this process inserts into Chroma: insertion holds the GIL, so a thread could not overlap.
    """
    import json
    import resource

    os.environ.setdefault("ANONYMIZED_TELEMETRY", "False")
    loading = [0.0]  # seconds spent loading ontologies and making their records
    try:
        from ontosearch.embed_pool import EmbedderPool

        # Workers start loading the model now, while this process opens Chroma and the ontology.
        with EmbedderPool(embedder_name) as embedder:
            import chromadb

            from ontosearch.indexing import index_ontology, prepare_records
            from ontosearch.ontologies import load_ontology

            def prepare(source: Any) -> Any:
                started = time.monotonic()
                if isinstance(source, str):
                    print(f"build-snapshot: loading {source}", file=sys.stderr, flush=True)
                    source = load_ontology(source, versions.get(source), obo_paths.get(source))
                prepared = prepare_records(source, embedder, synonyms)
                loading[0] += time.monotonic() - started
                return prepared

            client = chromadb.PersistentClient(path=persist_dir)
            collections = []
            upcoming = prepare(sources[0])
            for index in range(len(sources)):
                current = upcoming
                # The next ontology's chunks queue behind this one's: the workers never wait for
                # this process to finish a collection and load the next ontology.
                upcoming = prepare(sources[index + 1]) if index + 1 < len(sources) else None
                started = time.monotonic()
                entry = index_ontology(client, current.ontology, embedder, progress=progress,
                                       synonyms=synonyms, prepared=current)
                print(f"build-snapshot: indexed {entry['name']}: {entry['records']} records in "
                      f"{time.monotonic() - started:.1f} s", file=sys.stderr, flush=True)
                collections.append(entry)
            result = {"collections": collections, "embedder": embedder.spec()}
        # The workers have exited (and been waited for), so their CPU time is counted as children's.
        own, workers = (resource.getrusage(who) for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN))
        print(f"build-snapshot: CPU time: embedding workers {workers.ru_utime + workers.ru_stime:.0f} s, "
              f"loading and inserting {own.ru_utime + own.ru_stime:.0f} s (loading ontologies and making "
              f"records {loading[0]:.1f} s)", file=sys.stderr, flush=True)
    except Exception as exc:  # reported by the parent as one line; the traceback goes to stderr
        traceback.print_exc(file=sys.stderr)
        result = {"error": f"{type(exc).__name__}: {exc}"}
    Path(result_path).write_text(json.dumps(result), encoding="utf-8")


def index_in_child(
    persist_dir: str | Path,
    sources: Sequence[Any],
    versions: dict[str, str] | None = None,
    obo_paths: dict[str, str] | None = None,
    embedder_name: str | None = None,
    synonyms: bool = True,
    progress: bool = True,
) -> tuple[list[CollectionInfo], dict[str, Any]]:
    """Run the indexing in a spawned process; returns the collections and the embedder spec."""
    import json

    persist_dir = Path(persist_dir)
    result_path = persist_dir.parent / "index-result.json"
    context = multiprocessing.get_context("spawn")
    process = context.Process(
        target=_index_worker,
        args=(str(persist_dir), list(sources), dict(versions or {}), dict(obo_paths or {}), embedder_name,
              synonyms, progress, str(result_path)),
        name="ontosearch-index",
    )
    process.start()
    try:
        process.join()
    except BaseException:
        # Interrupted (Ctrl-C, or SIGTERM turned into KeyboardInterrupt by `main`): the indexing
        # process is not a daemon and would go on writing; stop it and its embedding workers.
        _stop(process)
        raise
    if not result_path.exists():
        raise BuildError(f"the indexing process died (exit code {process.exitcode}) before it finished; "
                         "see the messages above (out of memory?)")
    result = json.loads(result_path.read_text(encoding="utf-8"))
    if "error" in result:
        raise BuildError(f"indexing failed: {result['error']}")
    if process.exitcode != 0:
        raise BuildError(f"the indexing process exited with code {process.exitcode}")
    fields = ("name", "ontology", "source_version", "terms", "records")
    collections = [CollectionInfo(**{k: c[k] for k in fields}) for c in result["collections"]]
    return collections, result["embedder"]


def _stop(process: Any, grace: float = 10.0) -> None:
    if process.is_alive():
        process.terminate()
        process.join(grace)
    if process.is_alive():
        process.kill()
        process.join(grace)


def verify_with_server(persist_dir: str | Path, manifest: Manifest, log: Log) -> None:
    """Open the directory with a fresh `chroma run` and query every collection the manifest lists."""
    import chromadb

    from ontosearch.chroma_process import ChromaServer

    started = time.monotonic()
    log_path = Path(persist_dir).parent / "chroma-verify.log"
    with ChromaServer(persist_dir, log_path=log_path) as server:
        client = chromadb.HttpClient(host=server.host, port=server.port,
                                     settings=chromadb.Settings(anonymized_telemetry=False))
        for entry in manifest.collections:
            collection = client.get_collection(entry.name)
            count = collection.count()
            if count != entry.records:
                raise BuildError(f"verification: {entry.name} holds {count} records in a fresh server, "
                                 f"expected {entry.records}")
            if count == 0:
                continue
            probe = collection.get(limit=1, include=["embeddings"])
            result = collection.query(query_embeddings=[probe["embeddings"][0]], n_results=min(5, count),
                                      include=["distances"])
            if not result["ids"] or not result["ids"][0]:
                raise BuildError(f"verification: a query on {entry.name} returned nothing")
            if probe["ids"][0] not in result["ids"][0]:
                raise BuildError(f"verification: {entry.name} does not find its own record "
                                 f"{probe['ids'][0]} by its vector; the index is damaged")
    log(f"build-snapshot: verified {len(manifest.collections)} collection(s) with a fresh chroma run "
        f"in {time.monotonic() - started:.1f} s")


def snapshot_from_persist_dir(
    persist_dir: str | Path,
    out_dir: str | Path,
    collections: Sequence[CollectionInfo],
    embedder_spec: dict[str, Any],
    compression: str = "gz",
    verify: bool = True,
    log: Log | None = None,
    progress: bool = True,
) -> Manifest:
    """Archive a closed persist directory into `out_dir`, verify it, then write the manifest.

    The persist directory must not be open in any process (see the module docstring).
    """
    log = log or _stderr
    out_dir = Path(out_dir)
    if compression not in available_compressions():
        raise BuildError(f"compression {compression!r} is not available here; choose one of "
                         f"{', '.join(available_compressions())}")
    out_dir.mkdir(parents=True, exist_ok=True)
    if (out_dir / MANIFEST_NAME).exists():
        raise BuildError(f"{out_dir} already holds a snapshot; choose an empty --out directory")
    archive_path = out_dir / archive_file_name(compression)
    persist_bytes = directory_bytes(persist_dir)
    log(f"build-snapshot: archiving {persist_bytes / 2**20:.1f} MiB ({compression})")
    started = time.monotonic()
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=persist_bytes, desc="archiving", unit="B", unit_scale=True, file=sys.stderr)
    try:
        try:
            sha256, size = create_archive(persist_dir, archive_path, compression, bar.update if bar else None)
        finally:
            if bar is not None:
                bar.close()
        log(f"build-snapshot: archive {archive_path.name} {size / 2**20:.1f} MiB "
            f"in {time.monotonic() - started:.1f} s")
        manifest = _verified_manifest(out_dir, archive_path, sha256, size, persist_bytes, collections,
                                      embedder_spec, compression, verify, log)
    except BaseException:
        archive_path.unlink(missing_ok=True)  # an archive without a manifest is not a snapshot
        raise
    manifest.save(out_dir)
    return manifest


def _verified_manifest(
    out_dir: Path,
    archive_path: Path,
    sha256: str,
    size: int,
    persist_bytes: int,
    collections: Sequence[CollectionInfo],
    embedder_spec: dict[str, Any],
    compression: str,
    verify: bool,
    log: Log,
) -> Manifest:
    from ontosearch.restore import restore_from_dir

    manifest = Manifest(
        format_version=SNAPSHOT_FORMAT_VERSION,
        chroma_version=CHROMA_VERSION,
        embedder=dict(embedder_spec),
        collections=list(collections),
        archive=ArchiveInfo(name=archive_path.name, sha256=sha256, bytes=size, compression=compression),
        persist_bytes=persist_bytes,
        created=utc_now_iso(),
        version=None,
    )
    manifest = Manifest.from_dict(manifest.to_dict(), source="built manifest")  # same checks as a reader's
    if verify:
        with tempfile.TemporaryDirectory(prefix=".verify-", dir=out_dir) as work:
            candidate = Path(work) / "candidate"
            candidate.mkdir()
            try:
                os.link(archive_path, candidate / archive_path.name)
            except OSError:
                shutil.copyfile(archive_path, candidate / archive_path.name)
            manifest.save(candidate)
            restored = Path(work) / "restored"
            restore_from_dir(candidate, restored, log=lambda _m: None)
            verify_with_server(restored, manifest, log)
    return manifest


def build_snapshot(
    ontologies: Sequence[Any],
    out_dir: str | Path,
    embedder_name: str | None = None,
    obo_paths: dict[str, str] | None = None,
    versions: dict[str, str] | None = None,
    compression: str = "gz",
    synonyms: bool = True,
    progress: bool = True,
    log: Log | None = None,
) -> Manifest:
    """Build a verified snapshot of `ontologies` (names such as "cl", or `Ontology` objects) in `out_dir`."""
    log = log or _stderr
    if not ontologies:
        raise BuildError("no ontologies to build; pass --ontologies cl,uberon,mondo or a subset")
    out_dir = Path(out_dir)
    if (out_dir / MANIFEST_NAME).exists():
        raise BuildError(f"{out_dir} already holds a snapshot; choose an empty --out directory")
    if compression not in available_compressions():
        raise BuildError(f"compression {compression!r} is not available here; choose one of "
                         f"{', '.join(available_compressions())}")
    out_dir.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix=".build-", dir=out_dir) as work:
        persist = Path(work) / "persist"
        persist.mkdir()
        log(f"build-snapshot: indexing {', '.join(_describe(o) for o in ontologies)} "
            f"with {embedder_name or 'the default embedder'}")
        collections, spec = index_in_child(persist, ontologies, versions, obo_paths, embedder_name, synonyms,
                                           progress)
        manifest = snapshot_from_persist_dir(persist, out_dir, collections, spec, compression, True, log,
                                             progress)
    log(f"build-snapshot: done in {time.monotonic() - started:.1f} s: {out_dir / MANIFEST_NAME}")
    return manifest


def _describe(source: Any) -> str:
    if isinstance(source, str):
        return source
    return f"{source.name} {source.version} ({len(source.terms)} terms)"


def _pairs(values: Sequence[str], option: str) -> dict[str, str]:
    """`name=value` items (comma- or repeat-separated) to a dict keyed by canonical ontology name."""
    from ontosearch.ontologies import resolve_ontology

    out: dict[str, str] = {}
    for value in values:
        for item in filter(None, (v.strip() for v in value.split(","))):
            name, sep, rest = item.partition("=")
            if not sep or not rest:
                raise BuildError(f"{option} takes name=value items (e.g. cl=2025-04-10), got {item!r}")
            out[resolve_ontology(name)] = rest
    return out


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m ontosearch build-snapshot",
        description="Index ontologies into Chroma, archive the persist directory and verify it with a "
                    "fresh chroma run; writes DIR/manifest.json and one archive.",
    )
    parser.add_argument("--ontologies", default=",".join(ONTOLOGIES),
                        help=f"comma-separated names or aliases (default {','.join(ONTOLOGIES)})")
    parser.add_argument("--out", required=True, help="directory for manifest.json and the archive")
    parser.add_argument("--embedder", default=None, help="embedder name or local model directory")
    parser.add_argument("--obo", action="append", default=[], metavar="NAME=PATH",
                        help="read an ontology from an OBO file instead of the packaged copy (repeatable)")
    parser.add_argument("--versions", action="append", default=[], metavar="NAME=VERSION,...",
                        help="packaged ontology versions to use (default: newest)")
    parser.add_argument("--compression", default="gz", choices=["gz", "xz", "zst"],
                        help="archive compression (zst needs the zstandard module; default gz)")
    parser.add_argument("--no-synonym-vectors", action="store_true",
                        help="embed labels only (synonyms stay in metadata)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    args = parser.parse_args(argv)
    # SIGTERM (`kill`, a container stop) cleans up like Ctrl-C: no indexing process left behind.
    try:
        with sigterm_raises():
            return _run(args)
    except KeyboardInterrupt:
        print("build-snapshot: interrupted; no snapshot written", file=sys.stderr)
        return 130


def _run(args: argparse.Namespace) -> int:
    try:
        from ontosearch.ontologies import OntologyError, resolve_ontology
        from ontosearch.restore import RestoreError
    except ImportError as exc:  # pragma: no cover - packaging problem
        print(f"build-snapshot: {exc}", file=sys.stderr)
        return 1
    try:
        names = [resolve_ontology(n) for n in args.ontologies.split(",") if n.strip()]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise BuildError(f"--ontologies names {', '.join(duplicates)} more than once")
        manifest = build_snapshot(
            names, args.out, embedder_name=args.embedder, obo_paths=_pairs(args.obo, "--obo"),
            versions=_pairs(args.versions, "--versions"), compression=args.compression,
            synonyms=not args.no_synonym_vectors, progress=not args.no_progress,
        )
    except (BuildError, ArchiveError, ManifestError, OntologyError, RestoreError) as exc:
        print(f"build-snapshot: {exc}", file=sys.stderr)
        return 1
    for entry in manifest.collections:
        print(f"{entry.name}\t{entry.terms} terms\t{entry.records} records")
    print(f"archive {manifest.archive.name} {manifest.archive.bytes} bytes sha256 {manifest.archive.sha256}")
    return 0

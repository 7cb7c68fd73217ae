"""build-snapshot: indexing in a child process, archiving, verification with a fresh `chroma run`,
and the manifest written only for a snapshot that passed all of it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from snapshot_helpers import TEST_EMBEDDER, write_persist_dir

from ontosearch.archive import sha256_file
from ontosearch.constants import CHROMA_VERSION, MANIFEST_NAME, SNAPSHOT_FORMAT_VERSION
from ontosearch.manifest import Manifest
from ontosearch.restore import RestoreError, restore_from_dir
from ontosearch.snapshot_build import BuildError, build_snapshot, main, snapshot_from_persist_dir

REPO = Path(__file__).resolve().parents[1]


def _quiet(_message: str) -> None:
    pass


@pytest.fixture(scope="module")
def small_cl():
    from ontosearch.ontologies import Ontology, load_ontology

    cl = load_ontology("cl")
    wanted = {"CL:0000236", "CL:0000182", "CL:0000540", "CL:0000084", "CL:0000057"}  # B, hepatocyte, ...
    terms = [t for t in cl.terms if t.id in wanted] + [t for t in cl.terms[:40] if t.id not in wanted]
    return Ontology(cl.name, cl.version, terms)


def test_small_ontology_builds_a_verified_snapshot_that_answers_text_queries(small_cl, tmp_path):
    import chromadb

    from ontosearch.chroma_process import ChromaServer
    from ontosearch.embedders import get_embedder

    out = tmp_path / "snap"
    manifest = build_snapshot([small_cl], out, progress=False, log=_quiet)

    embedder = get_embedder()
    assert manifest.embedder == embedder.spec()
    assert manifest.format_version == SNAPSHOT_FORMAT_VERSION and manifest.chroma_version == CHROMA_VERSION
    assert manifest.version is None
    [entry] = manifest.collections
    assert (entry.ontology, entry.source_version) == ("cl", small_cl.version)
    assert entry.terms == len(small_cl.terms)
    assert entry.records >= entry.terms
    archive = out / manifest.archive.name
    assert sha256_file(archive) == manifest.archive.sha256
    assert archive.stat().st_size == manifest.archive.bytes
    assert sorted(p.name for p in out.iterdir()) == sorted([MANIFEST_NAME, manifest.archive.name])
    assert Manifest.load(out) == manifest

    data = tmp_path / "data"
    restore_from_dir(out, data, log=_quiet)
    hepatocyte = next(t for t in small_cl.terms if t.id == "CL:0000182")
    with ChromaServer(data) as server:
        collection = chromadb.HttpClient(host=server.host, port=server.port).get_collection(entry.name)
        assert collection.count() == entry.records
        hits = collection.query(query_embeddings=embedder.embed([hepatocyte.label]), n_results=1,
                                include=["metadatas"])
        assert hits["metadatas"][0][0]["term_id"] == "CL:0000182"


def test_several_ontologies_build_into_one_snapshot_in_order(small_cl, tmp_path):
    """The build embeds the next ontology while it inserts the current one; each collection is whole."""
    from ontosearch.indexing import count_records
    from ontosearch.ontologies import Ontology, load_ontology

    uberon = load_ontology("uberon")
    small_uberon = Ontology(uberon.name, uberon.version, uberon.terms[:30])
    manifest = build_snapshot([small_cl, small_uberon], tmp_path / "snap", progress=False, log=_quiet)
    assert [(c.ontology, c.records) for c in manifest.collections] == [
        ("cl", count_records(small_cl)), ("uberon", count_records(small_uberon))]


def test_failed_indexing_leaves_no_snapshot(tmp_path):
    from ontosearch.ontologies import Ontology

    out = tmp_path / "snap"
    with pytest.raises(BuildError, match="indexing failed: ValueError: cannot name a collection"):
        build_snapshot([Ontology("cl", "", [])], out, progress=False, log=_quiet)
    assert list(out.iterdir()) == []


def test_verification_failure_leaves_neither_manifest_nor_archive(tmp_path):
    persist = tmp_path / "persist"
    persist.mkdir()
    [entry] = write_persist_dir(persist, {"cl_test": 40})
    wrong = entry.__class__(**{**entry.__dict__, "records": 41})
    out = tmp_path / "snap"
    with pytest.raises(RestoreError, match="cl_test holds 40 records but the manifest says 41"):
        snapshot_from_persist_dir(persist, out, [wrong], TEST_EMBEDDER, log=_quiet, progress=False)
    assert list(out.iterdir()) == []


@pytest.mark.parametrize("compression", ["gz", "xz", "zst"])
def test_every_compression_builds_and_restores(tmp_path, compression):
    persist = tmp_path / "persist"
    persist.mkdir()
    entries = write_persist_dir(persist, {"cl_test": 1200})
    manifest = snapshot_from_persist_dir(persist, tmp_path / "snap", entries, TEST_EMBEDDER,
                                         compression=compression, log=_quiet, progress=False)
    assert manifest.archive.name == f"persist.tar.{compression}"
    restore_from_dir(tmp_path / "snap", tmp_path / "data", log=_quiet)
    assert (tmp_path / "data" / "chroma.sqlite3").is_file()


def test_out_dir_that_already_holds_a_snapshot_is_refused(tmp_path):
    (tmp_path / MANIFEST_NAME).write_text("{}")
    with pytest.raises(BuildError, match="already holds a snapshot; choose an empty --out"):
        build_snapshot(["cl"], tmp_path, log=_quiet)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--ontologies", "cells"], "unknown ontology 'cells'"),
        (["--ontologies", "cl,cell_type"], "--ontologies names cl more than once"),
        (["--versions", "cl"], "--versions takes name=value items"),
        (["--obo", "cl=", "--ontologies", "cl"], "--obo takes name=value items"),
    ],
)
def test_cli_bad_input_exits_1_with_a_clear_message(tmp_path, capsys, args, message):
    assert main([*args, "--out", str(tmp_path / "snap")]) == 1
    assert message in capsys.readouterr().err


@pytest.mark.slow
def test_full_cell_ontology_builds_from_the_command_line(tmp_path):
    out = tmp_path / "cl"
    result = subprocess.run(
        [sys.executable, "-m", "ontosearch", "build-snapshot", "--ontologies", "cl", "--out", str(out),
         "--no-progress"],
        capture_output=True, text=True, timeout=900, cwd=REPO,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    manifest = Manifest.load(out)
    [entry] = manifest.collections
    assert entry.ontology == "cl" and entry.terms > 3000
    assert "verified 1 collection(s) with a fresh chroma run" in result.stderr
    assert json.loads((out / MANIFEST_NAME).read_text())["archive"]["sha256"] == manifest.archive.sha256


def _descendants(pid: int) -> set[int]:
    found: set[int] = set()
    frontier = [pid]
    while frontier:
        current = frontier.pop()
        try:
            children = Path(f"/proc/{current}/task/{current}/children").read_text().split()
        except OSError:
            continue
        for child in map(int, children):
            if child not in found:
                found.add(child)
                frontier.append(child)
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.mark.slow
def test_sigterm_stops_the_indexing_process_and_its_workers_and_writes_nothing(tmp_path):
    import signal
    import time

    out = tmp_path / "snap"
    process = subprocess.Popen(
        [sys.executable, "-m", "ontosearch", "build-snapshot", "--ontologies", "uberon", "--out", str(out),
         "--no-progress"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        deadline = time.monotonic() + 120
        workers: set[int] = set()
        while time.monotonic() < deadline and len(workers) < 2:  # the indexing process and a worker
            workers = _descendants(process.pid)
            time.sleep(0.2)
        assert len(workers) >= 2, "the build never started its indexing process"
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 130
    assert "interrupted" in stderr
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and any(_alive(pid) for pid in workers):
        time.sleep(0.2)
    assert not [pid for pid in workers if _alive(pid)]
    assert not (out / MANIFEST_NAME).exists() and not list(out.glob("persist.tar*"))

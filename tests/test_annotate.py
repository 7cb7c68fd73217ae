"""`python -m ontosearch annotate` against real Chroma stores with the real MiniLM embedder.

A subset of the packaged Cell Ontology (a few hundred real terms) keeps the index quick to build; the
full-ontology run of the README's first command is the slow test at the end.
"""

from __future__ import annotations

import csv
import io
import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import chromadb
import pytest

from ontosearch import annotate, constants
from ontosearch.chroma_process import ChromaServer
from ontosearch.embedders import get_embedder
from ontosearch.indexing import collection_name, count_records, index_ontology
from ontosearch.label_io import RESULT_COLUMNS, ResultWriter
from ontosearch.ontologies import Ontology, load_ontology

REPO = Path(__file__).resolve().parents[1]
KEYWORDS = ("T cell", "B cell", "hepatocyte", "natural killer", "monocyte", "macrophage")
SUMMARY = re.compile(
    r"^annotate: (\d+) rows, (\d+) annotated, (\d+) errors, (\d+) without a match; (\d+) labels/s "
    r"\(\d+\.\d s, setup \d+\.\d s\) -> (.+)$", re.M)


def cl_subset() -> Ontology:
    full = load_ontology("cl")
    terms = [t for t in full.terms if any(k in t.label for k in KEYWORDS)]
    kept = {t.id for t in terms}
    terms = [replace(t, parents=tuple(p for p in t.parents if p in kept)) for t in terms]
    return Ontology(name="cl", version=full.version, terms=terms)


@pytest.fixture(scope="module")
def subset() -> Ontology:
    return cl_subset()


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory, subset: Ontology) -> Path:
    """A local store holding the CL subset, as a first `annotate` run would leave it."""
    path = tmp_path_factory.mktemp("store")
    client = chromadb.PersistentClient(path=str(path))
    index_ontology(client, subset, get_embedder(), progress=False)
    return path


@pytest.fixture
def local(monkeypatch: pytest.MonkeyPatch, store: Path, tmp_path: Path) -> Path:
    """Run against the subset store; no remote server; a private cache dir."""
    monkeypatch.delenv(constants.ENV_URL, raising=False)
    monkeypatch.setenv(constants.ENV_PATH, str(store))
    monkeypatch.setenv("ONTOSEARCH_CACHE_DIR", str(tmp_path / "cache"))
    return store


def run(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = annotate.main(args)
    out = capsys.readouterr()
    return code, out.out, out.err


def read_output(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        assert tuple(reader.fieldnames or ()) == RESULT_COLUMNS
        return list(reader)


def groups(rows: list[dict[str, str]]) -> list[tuple[str, str, list[dict[str, str]]]]:
    """Output rows folded back into input rows: (input, status, rows); a rank-1 row starts a new one."""
    folded: list[tuple[str, str, list[dict[str, str]]]] = []
    for row in rows:
        if row["status"] == "ok" and row["rank"] != "1":
            assert folded and folded[-1][0] == row["input"], f"rank {row['rank']} without rank 1: {row}"
            folded[-1][2].append(row)
        else:
            folded.append((row["input"], row["status"], [row]))
    return folded


def test_txt_every_input_row_is_accounted_for_in_order(local: Path, tmp_path: Path,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    labels = tmp_path / "labels.txt"
    labels.write_bytes(b"hepatocytes\nB cells\n\nNK cells\nhepatocytes\n" + b"z" * 1200 + b"\n"
                       b"CD14+ monocytes\nT\xe9 cells\n")
    out = tmp_path / "out.csv"
    code, stdout, err = run(["--input", str(labels), "--ontology", "cell_type", "--top-k", "2",
                             "--output", str(out)], capsys)
    assert code == 0, err
    folded = groups(read_output(out))
    assert [(g[0][:12], g[1]) for g in folded] == [
        ("hepatocytes", "ok"), ("B cells", "ok"), ("", "error"), ("NK cells", "ok"), ("hepatocytes", "ok"),
        ("z" * 12, "error"), ("CD14+ monocy", "ok"), ("T\ufffd cells", "error"),
    ]
    assert all(len(g[2]) == 2 for g in folded if g[1] == "ok")
    assert [r["rank"] for r in folded[0][2]] == ["1", "2"]
    assert folded[0][2][0]["term_id"] == "CL:0000182"  # hepatocyte
    assert folded[1][2][0]["term_id"] == "CL:0000236"  # B cell
    assert folded[0][2] == folded[4][2]  # a repeated label gets the same answer
    assert all(r["ontology"] == "cl" for g in folded for r in g[2])
    assert all(0.0 <= float(r["score"]) <= 1.0 for g in folded if g[1] == "ok" for r in g[2])
    errors = [g[2][0]["error"] for g in folded if g[1] == "error"]
    assert errors[0] == "empty label"
    assert "over the limit of 1000" in errors[1]
    assert "not valid UTF-8" in errors[2]

    summary = SUMMARY.search(stdout)
    assert summary, stdout
    assert summary.groups()[:4] == ("8", "5", "3", "0")
    assert summary.group(6) == str(out)
    assert stdout.strip().count("\n") == 0  # the summary is the one line on stdout


def test_csv_column_tsv_and_jsonl_inputs(local: Path, tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    csv_in = tmp_path / "samples.csv"
    csv_in.write_text('sample,cell_type\nS1,hepatocytes\nS2,"B cells, naive"\nS3,\n')
    code, stdout, _ = run(["--input", str(csv_in), "--ontology", "cl", "--column", "cell_type",
                           "--top-k", "1", "--output", str(tmp_path / "a.csv")], capsys)
    assert code == 0
    rows = read_output(tmp_path / "a.csv")
    assert [(r["input"], r["status"]) for r in rows] == [
        ("hepatocytes", "ok"), ("B cells, naive", "ok"), ("", "error")]
    assert SUMMARY.search(stdout).groups()[:3] == ("3", "2", "1")

    tsv_in = tmp_path / "labels.tsv"
    tsv_in.write_text("label\tn\nNK cells\t3\nmacrophages\t5\n")
    code, _, _ = run(["--input", str(tsv_in), "--ontology", "cl", "--top-k", "1",
                      "--output", str(tmp_path / "b.csv")], capsys)
    assert code == 0
    assert [r["input"] for r in read_output(tmp_path / "b.csv")] == ["NK cells", "macrophages"]

    jsonl_in = tmp_path / "labels.jsonl"
    jsonl_in.write_text('{"label": "hepatocytes"}\n{"label": \n{"cell": "B cells"}\n')
    code, stdout, _ = run(["--input", str(jsonl_in), "--ontology", "cl", "--top-k", "1",
                           "--output", str(tmp_path / "c.csv")], capsys)
    assert code == 0
    rows = read_output(tmp_path / "c.csv")
    assert [r["status"] for r in rows] == ["ok", "error", "error"]
    assert rows[1]["error"].startswith("not valid JSON") and rows[2]["error"].startswith("no 'label' key")
    assert SUMMARY.search(stdout).groups()[:3] == ("3", "1", "2")


def test_bad_arguments_exit_2_with_a_reason_and_leave_output_alone(
    local: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    csv_in = tmp_path / "samples.csv"
    csv_in.write_text("sample,tissue\nS1,lung\n")
    out = tmp_path / "out.csv"
    out.write_text("previous results\n")
    base = ["--input", str(csv_in), "--output", str(out)]

    code, _, err = run([*base, "--ontology", "cl", "--column", "cell_type"], capsys)
    assert code == 2 and "column 'cell_type' is not in the header" in err
    code, _, err = run([*base, "--ontology", "go"], capsys)
    assert code == 2 and "unknown ontology 'go'" in err
    code, _, err = run([*base, "--ontology", "cl", "--top-k", "0"], capsys)
    assert code == 2 and "--top-k must be between 1 and 100" in err
    missing = ["--input", str(tmp_path / "nope.txt"), "--output", str(out), "--ontology", "cl"]
    code, _, err = run(missing, capsys)
    assert code == 2 and "does not exist" in err
    code, _, err = run([*base[:2], "--output", str(tmp_path / "no" / "dir.csv"), "--ontology", "cl",
                        "--column", "tissue"], capsys)
    assert code == 2 and "does not exist; create it first" in err

    assert out.read_text() == "previous results\n"
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []  # no temp files


def test_large_input_streams_in_chunks_and_keeps_every_row(local: Path, tmp_path: Path,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    pool = ["hepatocytes", "B cells", "NK cells", "monocytes", "T cells", "macrophages", "naive B cells",
            "memory T cells", "plasmacytoid monocytes", "Kupffer cells"]
    labels = [pool[(i * 7) % len(pool)] if i % 97 else "" for i in range(3000)]
    path = tmp_path / "many.txt"
    path.write_text("\n".join(labels) + "\n")
    out = tmp_path / "many.csv"
    code, stdout, _ = run(["--input", str(path), "--ontology", "cl", "--top-k", "1", "--chunk-rows", "256",
                           "--output", str(out)], capsys)
    assert code == 0
    rows = read_output(out)
    assert [r["input"] for r in rows] == labels
    assert [r["status"] for r in rows] == ["ok" if label else "error" for label in labels]
    empty = sum(1 for label in labels if not label)
    assert SUMMARY.search(stdout).groups()[:4] == ("3000", str(3000 - empty), str(empty), "0")


def test_a_failing_server_marks_its_rows_and_stops_after_repeated_failures(
    tmp_path: Path, subset: Ontology
) -> None:
    """A chunk the store cannot answer becomes error rows; after three such chunks the rest are marked."""
    client = chromadb.PersistentClient(path=str(tmp_path / "store"))
    small = Ontology(name="cl", version=subset.version, terms=subset.terms[:20])
    info = index_ontology(client, small, get_embedder(), progress=False)
    client.delete_collection(info["name"])  # the store loses the collection between start-up and matching
    rows = iter([(i, f"label {i % 3}", None) for i in range(1, 11)] + [(11, "", "empty label")])
    out = io.StringIO()
    writer = ResultWriter(out, ontology="cl")
    failed = annotate.annotate_stream(rows, writer, "cl", 3, client, chunk_rows=2)
    assert failed == 3
    assert writer.counts == {"rows": 11, "annotated": 0, "errors": 11, "no_match": 0}
    table = list(csv.DictReader(io.StringIO(out.getvalue())))
    assert len(table) == 11
    assert all(r["error"].startswith("matching failed: MatcherError") for r in table[:6])
    assert all(r["error"].startswith("not attempted after 3 failed batches") for r in table[6:10])
    assert table[10]["error"] == "empty label"


def test_first_use_builds_the_local_index_then_reuses_it(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, subset: Ontology, capsys: pytest.CaptureFixture[str]
) -> None:
    import ontosearch.ontologies

    monkeypatch.delenv(constants.ENV_URL, raising=False)
    monkeypatch.setenv(constants.ENV_PATH, str(tmp_path / "fresh-store"))
    # The packaged CL, cut to the subset so the build stays quick; indexing and Chroma are real.
    monkeypatch.setattr(ontosearch.ontologies, "load_ontology", lambda name, *a, **k: subset)
    labels = tmp_path / "l.txt"
    labels.write_text("hepatocytes\n")
    args = ["--input", str(labels), "--ontology", "cl", "--output", str(tmp_path / "o.csv")]
    # What an interrupted earlier build leaves: a half-filled staging collection, never used.
    client = chromadb.PersistentClient(path=str(tmp_path / "fresh-store"))
    staging = annotate.STAGING_PREFIX + collection_name("cl", subset.version)
    partial = client.create_collection(staging, embedding_function=None)
    partial.add(ids=["CL:0000001"], embeddings=[[1.0] + [0.0] * 383])

    code, _, err = run(args, capsys)
    assert code == 0
    assert "first use of cl: building the local index" in err
    assert re.search(r"built cl_\S+ \(\d+ vectors\)", err)
    assert read_output(tmp_path / "o.csv")[0]["term_id"] == "CL:0000182"
    names = sorted(c.name for c in client.list_collections())
    assert names == [collection_name("cl", subset.version)]
    assert client.get_collection(names[0]).count() == count_records(subset)

    code, _, err = run(args, capsys)
    assert code == 0 and "first use" not in err


@pytest.mark.slow
def test_sigterm_leaves_no_output_and_no_temp_file(local: Path, tmp_path: Path) -> None:
    labels = tmp_path / "many.txt"
    labels.write_text("".join(f"cell type number {i}\n" for i in range(200_000)))
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    proc = subprocess.Popen(
        [sys.executable, "-m", "ontosearch", "annotate", "--input", str(labels), "--ontology", "cl",
         "--output", str(out_dir / "o.csv"), "--chunk-rows", "64"],
        cwd=REPO, env={**os.environ}, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        assert proc.stderr is not None
        for line in proc.stderr:  # the run has started matching once this line is out
            if line.startswith("annotate: ") and " against " in line:
                break
        deadline = time.monotonic() + 120
        while not any(out_dir.iterdir()) and time.monotonic() < deadline:
            time.sleep(0.1)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130
    assert "interrupted; no output written" in err
    assert list(out_dir.iterdir()) == []


@pytest.mark.slow
def test_snapshot_dir_is_restored_once_and_used(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                                subset: Ontology, capsys: pytest.CaptureFixture[str]) -> None:
    from ontosearch.snapshot_build import build_snapshot

    build_snapshot([subset], tmp_path / "snap", progress=False, log=lambda _m: None)
    monkeypatch.delenv(constants.ENV_URL, raising=False)
    monkeypatch.setenv(constants.ENV_PATH, str(tmp_path / "untouched"))
    monkeypatch.setenv("ONTOSEARCH_CACHE_DIR", str(tmp_path / "cache"))
    labels = tmp_path / "l.txt"
    labels.write_text("B cells\n")
    args = ["--input", str(labels), "--ontology", "cl", "--snapshot", str(tmp_path / "snap"),
            "--output", str(tmp_path / "o.csv")]
    code, _, err = run(args, capsys)
    assert code == 0, err
    assert read_output(tmp_path / "o.csv")[0]["term_id"] == "CL:0000236"
    restored = list((tmp_path / "cache" / "snapshots").iterdir())
    assert len(restored) == 1
    assert not (tmp_path / "untouched").exists() or not any((tmp_path / "untouched").iterdir())
    code, _, err = run(args, capsys)
    assert code == 0 and "already holds" in err  # the second run reuses the restored copy


@pytest.mark.slow
def test_chroma_url_queries_the_remote_server(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                              subset: Ontology, capsys: pytest.CaptureFixture[str]) -> None:
    with ChromaServer(tmp_path / "server") as server:
        remote = chromadb.HttpClient(host=server.host, port=server.port)
        index_ontology(remote, subset, get_embedder(), progress=False)
        monkeypatch.setenv(constants.ENV_URL, server.url)
        monkeypatch.setenv(constants.ENV_TOKEN, "any-token")  # a bare chroma run ignores it
        monkeypatch.setenv(constants.ENV_PATH, str(tmp_path / "untouched"))
        labels = tmp_path / "l.txt"
        labels.write_text("NK cells\nhepatocytes\n")
        code, _, err = run(["--input", str(labels), "--ontology", "cl", "--top-k", "1",
                            "--output", str(tmp_path / "o.csv")], capsys)
    assert code == 0, err
    assert f"server {server.url}" in err
    assert [r["term_id"] for r in read_output(tmp_path / "o.csv")][1] == "CL:0000182"
    assert not (tmp_path / "untouched").exists()


@pytest.mark.slow
def test_readme_first_command_on_the_bundled_example(tmp_path: Path) -> None:
    """The README's first command, in a subprocess, building the full CL index on first use."""
    env = {**os.environ, constants.ENV_PATH: str(tmp_path / "store"),
           "ONTOSEARCH_CACHE_DIR": str(tmp_path / "cache")}
    env.pop(constants.ENV_URL, None)
    out = tmp_path / "annotations.csv"
    proc = subprocess.run(
        [sys.executable, "-m", "ontosearch", "annotate", "--input", "examples/cell_types.txt",
         "--ontology", "cl", "--top-k", "3", "--output", str(out)],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=900,
    )
    assert proc.returncode == 0, proc.stderr
    labels = (REPO / "examples" / "cell_types.txt").read_text().splitlines()
    folded = groups(read_output(out))
    assert [g[0] for g in folded] == labels
    assert all(g[1] == "ok" and len(g[2]) == 3 for g in folded)
    top1 = {g[0]: g[2][0]["term_id"] for g in folded}
    assert top1["hepatocytes"] == "CL:0000182"
    assert top1["B cells"] == "CL:0000236"
    assert top1["Tregs"] == "CL:0000815"
    summary = SUMMARY.search(proc.stdout)
    assert summary and summary.group(1) == str(len(labels)) and summary.group(2) == str(len(labels))
    assert "first use of cl" in proc.stderr



@pytest.mark.slow
def test_two_runs_on_a_fresh_store_build_the_index_once_and_both_annotate(tmp_path: Path) -> None:
    labels = tmp_path / "l.txt"
    labels.write_text("hepatocytes\nTregs\n")
    env = {**os.environ, constants.ENV_PATH: str(tmp_path / "store")}
    env.pop(constants.ENV_URL, None)
    runs = [
        subprocess.Popen(
            [sys.executable, "-m", "ontosearch", "annotate", "--input", str(labels), "--ontology", "cl",
             "--output", str(tmp_path / f"o{i}.csv"), "--quiet"],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        for i in range(2)
    ]
    results = [run.communicate(timeout=600) for run in runs]
    assert [run.returncode for run in runs] == [0, 0], [err for _, err in results]
    errors = "".join(err for _, err in results)
    assert errors.count("first use of cl: building the local index") == 1
    for i in range(2):
        assert [r["term_id"] for r in read_output(tmp_path / f"o{i}.csv") if r["rank"] == "1"] == [
            "CL:0000182", "CL:0000815"]
    client = chromadb.PersistentClient(path=str(tmp_path / "store"))
    assert [c.name for c in client.list_collections()] == [collection_name("cl", load_ontology("cl").version)]

"""AnnData in: `annotate --input data.h5ad --column ... [--h5ad-out ...]` and `ontosearch.annotate_anndata`.

Real .h5ad files written by anndata in the test, a real Chroma store of a packaged-CL subset (MiniLM).
"""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import anndata
import chromadb
import h5py
import numpy as np
import pandas as pd
import pytest
from scipy import sparse

import ontosearch
from ontosearch import annotate, constants
from ontosearch.anndata_io import schema_columns
from ontosearch.embedders import get_embedder
from ontosearch.indexing import index_ontology
from ontosearch.label_io import RESULT_COLUMNS
from ontosearch.ontologies import Ontology, load_ontology

REPO = Path(__file__).resolve().parents[1]
# Per cell, as a scientist's obs column holds them: repeats, stray spaces, a missing value, an id.
CELL_LABELS = ["B cells", "T cells", "B cells", None, "hepatocytes", " B cells ", "zebra stripes",
               "CL:0000236", "T cells", "hepatocytes"]


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    full = load_ontology("cl")
    keywords = ("T cell", "B cell", "hepatocyte")
    terms = [t for t in full.terms if any(k in t.label for k in keywords)]
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
    return store


def make_adata(n_repeat: int = 30) -> anndata.AnnData:
    labels = CELL_LABELS * n_repeat
    n = len(labels)
    rng = np.random.default_rng(3)
    counts = sparse.random(n, 40, density=0.1, format="csr", random_state=rng, dtype=np.float32)
    obs = pd.DataFrame({
        "cell_type": pd.Categorical(labels),
        "n_genes": rng.integers(200, 3000, n),
        "donor": pd.Categorical(["d1", "d2"] * (n // 2)),
    }, index=[f"cell{i}" for i in range(n)])
    adata = anndata.AnnData(X=counts, obs=obs, var=pd.DataFrame(index=[f"g{j}" for j in range(40)]))
    adata.layers["counts"] = counts.copy()
    adata.obsm["X_umap"] = rng.normal(size=(n, 2))
    return adata


def run(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = annotate.main(args)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_cellxgene_schema_columns_per_ontology() -> None:
    # CELLxGENE schema obs fields; the label goes beside the id (cell_type/tissue/disease are reserved)
    assert schema_columns("cl") == ("cell_type_ontology_term_id", "cell_type_ontology_term_label")
    assert schema_columns("tissue") == ("tissue_ontology_term_id", "tissue_ontology_term_label")
    assert schema_columns("mondo") == ("disease_ontology_term_id", "disease_ontology_term_label")


def test_h5ad_round_trip_one_row_set_per_distinct_label_and_every_cell_annotated(
        local: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    source = tmp_path / "data.h5ad"
    adata = make_adata()
    adata.write_h5ad(source)
    out, copy = tmp_path / "labels.csv", tmp_path / "annotated.h5ad"
    code, stdout, err = run(["--input", str(source), "--column", "cell_type", "--ontology", "cl", "--top-k",
                             "2", "--output", str(out), "--h5ad-out", str(copy), "--quiet"], capsys)
    assert code == 0, err
    with open(out, newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        assert tuple(reader.fieldnames or ()) == (*RESULT_COLUMNS, "n_rows")
        rows = list(reader)
    firsts = [r for r in rows if r["status"] != "ok" or r["rank"] == "1"]
    # distinct labels once each (" B cells " is "B cells"), in order of first appearance; missing last
    assert [(r["input"], r["n_rows"]) for r in firsts] == [
        ("B cells", "90"), ("T cells", "60"), ("hepatocytes", "60"), ("zebra stripes", "30"),
        ("CL:0000236", "30"), ("", "30")]
    assert sum(int(r["n_rows"]) for r in firsts) == adata.n_obs
    assert firsts[0]["term_id"] == "CL:0000236" and firsts[-1]["status"] == "error"
    assert "has no value for these cells" in firsts[-1]["error"]
    assert all(r["n_rows"] == f["n_rows"] for r in rows for f in firsts if r["input"] == f["input"])
    assert f"annotate: {adata.n_obs} cells" in stdout

    annotated = anndata.read_h5ad(copy)
    id_column, label_column = schema_columns("cl")
    expected = {"B cells": ("CL:0000236", "B cell"), " B cells ": ("CL:0000236", "B cell"),
                "CL:0000236": ("CL:0000236", "B cell"), None: ("unknown", "unknown")}
    for label, cell_id, cell_label in zip(adata.obs["cell_type"].astype(object).where(
            adata.obs["cell_type"].notna(), None), annotated.obs[id_column], annotated.obs[label_column],
            strict=True):
        if label in expected:
            assert (cell_id, cell_label) == expected[label], label
        assert isinstance(cell_id, str) and cell_id and isinstance(cell_label, str), label
    # every cell takes its label's first match
    by_label = {r["input"]: r["term_id"] for r in firsts}
    assert set(annotated.obs.loc[adata.obs["cell_type"] == "T cells", id_column]) == {by_label["T cells"]}
    # everything else is the input, unchanged
    assert list(annotated.obs.index) == list(adata.obs.index)
    pd.testing.assert_frame_equal(annotated.obs[adata.obs.columns], adata.obs)
    assert (annotated.X != adata.X).nnz == 0
    assert (annotated.layers["counts"] != adata.layers["counts"]).nnz == 0
    np.testing.assert_array_equal(annotated.obsm["X_umap"], adata.obsm["X_umap"])
    assert isinstance(annotated.obs[id_column].dtype, pd.CategoricalDtype)


def test_outputs_get_the_mode_of_a_new_file_or_of_the_file_they_replace(
        local: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The result and the annotated copy are made as owner-only temporary files and renamed into
    place: they must still be readable like any file the user writes (shared lab directories)."""
    source = tmp_path / "data.h5ad"
    make_adata(2).write_h5ad(source)
    out, copy = tmp_path / "labels.csv", tmp_path / "annotated.h5ad"
    args = ["--input", str(source), "--column", "cell_type", "--ontology", "cl", "--output", str(out),
            "--h5ad-out", str(copy), "--quiet"]
    previous = os.umask(0o022)
    try:
        assert run(args, capsys)[0] == 0
        assert (out.stat().st_mode & 0o777, copy.stat().st_mode & 0o777) == (0o644, 0o644)
        os.chmod(out, 0o640)
        os.chmod(copy, 0o600)
        assert run(args, capsys)[0] == 0
        assert (out.stat().st_mode & 0o777, copy.stat().st_mode & 0o777) == (0o640, 0o600)
        os.umask(0o077)
        out.unlink()
        assert run(args, capsys)[0] == 0
        assert out.stat().st_mode & 0o777 == 0o600
    finally:
        os.umask(previous)


def test_min_confidence_leaves_weak_labels_unknown_per_cell(local: Path, tmp_path: Path,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    source = tmp_path / "data.h5ad"
    adata = make_adata(2)
    adata.write_h5ad(source)
    copy = tmp_path / "annotated.h5ad"
    code, _, err = run(["--input", str(source), "--column", "cell_type", "--ontology", "cell_type",
                        "--output", str(tmp_path / "o.csv"), "--h5ad-out", str(copy), "--min-confidence",
                        "good", "--quiet"], capsys)
    assert code == 0, err
    obs = anndata.read_h5ad(copy).obs
    ids = obs.groupby(adata.obs["cell_type"].astype(str).str.strip(), observed=True)[
        "cell_type_ontology_term_id"].agg(set)
    assert ids["zebra stripes"] == {"unknown"}  # a vector guess, below "good"
    assert ids["B cells"] == {"CL:0000236"}


def test_python_api_annotates_an_in_memory_or_backed_anndata(store: Path, tmp_path: Path) -> None:
    client = chromadb.PersistentClient(path=str(store))
    adata = make_adata(1)
    table = ontosearch.annotate_anndata(adata, "cell_type", "cl", client=client)
    assert list(table.columns) == [*RESULT_COLUMNS, "n_rows"]
    assert table.loc[(table["input"] == "B cells") & (table["rank"] == 1), "n_rows"].item() == 3
    assert list(adata.obs.loc[adata.obs["cell_type"] == "B cells", "cell_type_ontology_term_id"]) == [
        "CL:0000236"] * 2
    assert adata.obs["cell_type_ontology_term_label"].notna().all()
    path = tmp_path / "backed.h5ad"
    make_adata(1).write_h5ad(path)
    backed = anndata.read_h5ad(path, backed="r")
    try:
        ontosearch.annotate_anndata(backed, "cell_type", "cl", client=client, top_k=1)
        assert backed.obs["cell_type_ontology_term_id"].iloc[0] == "CL:0000236"
    finally:
        backed.file.close()
    with pytest.raises(ValueError, match="obs has no column 'celltype'"):
        ontosearch.annotate_anndata(adata, "celltype", "cl", client=client)


def test_bad_h5ad_inputs_are_one_clear_message(local: Path, tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    source = tmp_path / "data.h5ad"
    make_adata(1).write_h5ad(source)
    labels = tmp_path / "labels.txt"
    labels.write_text("B cells\n", encoding="utf-8")
    fake = tmp_path / "fake.h5ad"
    fake.write_text("cell_type\nB cells\n", encoding="utf-8")
    out = str(tmp_path / "o.csv")
    cases = {
        "obs has no column 'celltype' (columns: 'cell_type', 'n_genes', 'donor')":
            ["--input", str(source), "--column", "celltype"],
        "obs column 'n_genes' holds int64 values, not labels":
            ["--input", str(source), "--column", "n_genes"],
        "an .h5ad input needs --column": ["--input", str(source)],
        "--h5ad-out needs an .h5ad --input":
            ["--input", str(labels), "--h5ad-out", str(tmp_path / "x.h5ad")],
        "--h5ad-out would overwrite the input": ["--input", str(source), "--column", "cell_type",
                                                 "--h5ad-out", str(source)],
        "as an .h5ad (HDF5) file": ["--input", str(fake), "--column", "cell_type"],
    }
    for expected, args in cases.items():
        code, _, err = run([*args, "--ontology", "cl", "--output", out], capsys)
        assert code == 2 and expected in err and "Traceback" not in err, (expected, err)
    assert not Path(out).exists()


def test_x_is_never_loaded(local: Path, tmp_path: Path) -> None:
    """An .h5ad whose X would take 3.6 GB in memory (30,000 x 30,000 float32, never written to disk,
    so the file stays small): annotating it and writing the annotated copy stay far below that."""
    n = 30_000
    source = tmp_path / "big.h5ad"
    labels = (["B cells", "T cells", "hepatocytes"] * n)[:n]
    anndata.AnnData(X=sparse.csr_matrix((n, 1), dtype=np.float32),
                    obs=pd.DataFrame({"cell_type": pd.Categorical(labels)},
                                     index=[f"c{i}" for i in range(n)])).write_h5ad(source)
    with h5py.File(source, "r+") as handle:
        del handle["X"]
        x = handle.create_dataset("X", shape=(n, n), dtype="float32", chunks=(1000, 1000))
        x.attrs["encoding-type"], x.attrs["encoding-version"] = "array", "0.2.0"
        del handle["var"]
        var = anndata.AnnData(obs=pd.DataFrame(index=[f"g{j}" for j in range(n)])).obs
        anndata.io.write_elem(handle, "var", var)
    assert source.stat().st_size < 50_000_000
    copy = tmp_path / "annotated.h5ad"
    script = (
        "import resource, sys\n"
        "from ontosearch import annotate\n"
        "code = annotate.main(sys.argv[1:])\n"
        "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)\n"
        "sys.exit(code)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script, "--input", str(source), "--column", "cell_type", "--ontology", "cl",
         "--output", str(tmp_path / "o.csv"), "--h5ad-out", str(copy), "--quiet"],
        cwd=REPO, env=os.environ.copy(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    peak_kib = int(done.stdout.strip().splitlines()[-1])
    assert peak_kib < 2_000_000, f"peak RSS {peak_kib / 1e6:.1f} GB: was X loaded?"
    with h5py.File(copy, "r") as handle:
        assert handle["X"].shape == (n, n)
        ids = anndata.io.read_elem(handle["obs"]["cell_type_ontology_term_id"])
    assert len(ids) == n and ids[0] == "CL:0000236"

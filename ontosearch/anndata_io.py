"""AnnData (.h5ad) in: one obs column annotated per distinct label, and per cell the CELLxGENE way.

Single-cell labels live in an AnnData's `obs` table, one value per cell, a few dozen distinct
values over a million cells. So the labels are grouped first: each distinct label is matched once
and gets one set of result rows with `n_rows`, the number of cells that carry it; the cells then
take their label's first match.

The CELLxGENE schema names the column each ontology's term ids go in: `cell_type_ontology_term_id`
(CL), `tissue_ontology_term_id` (Uberon) and `disease_ontology_term_id` (MONDO). Its human-readable
`cell_type` / `tissue` / `disease` columns are reserved (the portal adds them, and `cell_type` is
often the very column being annotated), so the label goes beside the id as
`<field>_ontology_term_label`. A cell whose label got no term (an error, no match, a match below
the minimum confidence, an obsolete id with only terms to consider) gets "unknown" in CL, which the
schema allows for cell types, and a missing value for Uberon and MONDO, where it allows none.

Reading a file never loads `X`, layers or embeddings: h5py opens it read-only and anndata's own
`read_elem` decodes just `obs/<column>` (categoricals and nullable strings included). Writing a
copy (`--h5ad-out`) copies the file byte for byte and replaces only its `obs` group.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ontosearch.confidence import at_least
from ontosearch.label_io import MAX_LABEL_CHARS, STATUS_OK, check_label, publish_file, result_lines
from ontosearch.ontologies import resolve_ontology

# CELLxGENE schema obs column for the term ids of each ontology.
SCHEMA_ID_COLUMNS = {
    "cl": "cell_type_ontology_term_id",
    "uberon": "tissue_ontology_term_id",
    "mondo": "disease_ontology_term_id",
}
# What a cell without a term gets; None is a missing value.
UNANNOTATED = {"cl": "unknown", "uberon": None, "mondo": None}
N_ROWS_COLUMN = "n_rows"


class AnnDataError(ValueError):
    """An .h5ad file or obs column that cannot be annotated as a whole; the message says what to do."""


def schema_columns(ontology: str) -> tuple[str, str]:
    """(term id column, label column) the annotated obs gains for `ontology`."""
    id_column = SCHEMA_ID_COLUMNS[resolve_ontology(ontology)]
    return id_column, id_column[: -len("_id")] + "_label"


@dataclass
class LabelGroup:
    """One distinct label of the column: what to match (or why not) and how many cells carry it."""

    label: str
    error: str | None
    n_rows: int


def group_labels(values: Any, column: str, max_chars: int = MAX_LABEL_CHARS) -> tuple[list[LabelGroup], Any]:
    """(distinct labels in order of first appearance, per-cell index into them) of an obs column.

    Values that strip to the same label are one group; cells without a value are one error group,
    last. A numeric or boolean column is refused as a whole (it is almost surely the wrong column);
    a value that is not text is an error group.
    """
    import numpy as np
    import pandas as pd

    series = pd.Series(values)
    kind = series.dtype
    if isinstance(kind, pd.CategoricalDtype):
        kind = series.cat.categories.dtype
    if pd.api.types.is_bool_dtype(kind) or pd.api.types.is_numeric_dtype(kind):
        raise AnnDataError(f"obs column {column!r} holds {kind} values, not labels; pass the column of "
                           "cell-type, tissue or disease names to --column")
    codes, uniques = pd.factorize(series, use_na_sentinel=True)  # uniques in order of appearance
    groups: list[LabelGroup] = []
    index_of: dict[tuple[str, str | None], int] = {}
    remap = np.zeros(len(uniques) + 1, dtype=np.int64)  # the last slot is for missing values (code -1)
    for position, value in enumerate(uniques):
        key = _key(value, column, max_chars)
        if key not in index_of:
            index_of[key] = len(groups)
            groups.append(LabelGroup(key[0], key[1], 0))
        remap[position] = index_of[key]
    if (codes < 0).any():
        groups.append(LabelGroup("", f"{column!r} has no value for these cells", 0))
        remap[-1] = len(groups) - 1
    cells = remap[codes]
    for group, count in zip(groups, np.bincount(cells, minlength=len(groups)), strict=True):
        group.n_rows = int(count)
    return groups, cells


def _key(value: Any, column: str, max_chars: int) -> tuple[str, str | None]:
    if not isinstance(value, str):
        return str(value)[:200], f"{column!r} value is {type(value).__name__}, not text"
    return check_label(value, max_chars)


def first_terms(
    groups: Sequence[LabelGroup], answers: Sequence[Any], ontology: str, min_confidence: str | None = None
) -> list[tuple[str | None, str | None]]:
    """(term id, term label) each group's cells take: the first match of an "ok" answer (at least
    `min_confidence`), else the ontology's unannotated value."""
    unknown = UNANNOTATED[resolve_ontology(ontology)]
    out = []
    for group, answer in zip(groups, answers, strict=True):
        first = answer[0] if group.error is None and answer else None
        usable = (
            first is not None and getattr(answer, "status", STATUS_OK) == STATUS_OK
            and (min_confidence is None or at_least(first.confidence, min_confidence))
        )
        out.append((first.term_id, first.term_label) if usable else (unknown, unknown))
    return out


def cell_columns(terms: Sequence[tuple[str | None, str | None]], cells: Any) -> tuple[Any, Any]:
    """The per-cell id and label columns (pandas categoricals) from the groups' terms."""
    import numpy as np
    import pandas as pd

    ids = np.array([term_id for term_id, _ in terms], dtype=object)
    labels = np.array([label for _, label in terms], dtype=object)
    return pd.Categorical(ids[cells]), pd.Categorical(labels[cells])


def annotate_anndata(
    adata: Any,
    column: str,
    ontology: str,
    client: Any = None,
    top_k: int = 3,
    min_confidence: str | None = None,
    embedder: Any = None,
) -> Any:
    """Annotate `adata.obs[column]`: adds the CELLxGENE id column and a label column to `adata.obs`
    (see `schema_columns`) for every cell, and returns a pandas DataFrame with one set of rows per
    distinct label (the `annotate` result columns plus `n_rows`).

    `client=None` connects with `ontosearch.connect()`; `embedder=None` uses the collection's. A
    backed AnnData works too: only `obs` is read and changed (in memory).
    """
    import pandas as pd

    from ontosearch.label_io import RESULT_COLUMNS
    from ontosearch.matcher import Matcher

    canonical = resolve_ontology(ontology)
    if column not in adata.obs.columns:
        raise AnnDataError(_missing_column(column, list(adata.obs.columns)))
    groups, cells = group_labels(adata.obs[column], column)
    if client is None:
        from ontosearch.connect import connect

        client = connect()
    matcher = Matcher(client, canonical, embedder=embedder)
    labels = [group.label for group in groups if group.error is None]
    found = dict(zip(labels, matcher.match(labels, top_k=top_k), strict=True)) if labels else {}
    answers = [found.get(group.label, []) if group.error is None else [] for group in groups]
    id_column, label_column = schema_columns(canonical)
    ids, names = cell_columns(first_terms(groups, answers, canonical, min_confidence), cells)
    adata.obs[id_column] = ids
    adata.obs[label_column] = names
    rows = []
    for group, answer in zip(groups, answers, strict=True):
        _, lines = result_lines(group.label, canonical, group.error, answer, min_confidence)
        rows += [[*line, group.n_rows] for line in lines]
    return pd.DataFrame(rows, columns=[*RESULT_COLUMNS, N_ROWS_COLUMN])


class GroupWriter:
    """Wraps a result writer for distinct labels: adds each label's `n_rows` to its rows and keeps
    its answer, from which the cells take their terms afterwards."""

    def __init__(self, inner: Any, groups: Sequence[LabelGroup]) -> None:
        self.inner = inner
        self.groups = groups
        self.answers: list[Any] = [[] for _ in groups]

    @property
    def counts(self) -> dict[str, int]:
        return self.inner.counts

    def write(self, row: int, label: str | None, error: str | None, matches: Any = ()) -> None:
        group = self.groups[row - 1]
        self.answers[row - 1] = matches if error is None else []
        self.inner.write(row, label, error, matches, extra=(group.n_rows,))

    def close(self) -> None:
        if hasattr(self.inner, "close"):
            self.inner.close()


def _missing_column(column: str, present: list[str]) -> str:
    shown = ", ".join(repr(name) for name in present[:30]) or "none"
    return f"obs has no column {column!r} (columns: {shown}); pass one of those to --column"


def read_obs_column(path: str | Path, column: str) -> Any:
    """One obs column of an .h5ad file, as a pandas Series; nothing else of the file is read."""
    import h5py
    from anndata.io import read_elem

    path = Path(path)
    if not path.is_file():
        raise AnnDataError(f"input file {str(path)!r} does not exist or is not a file")
    try:
        handle = h5py.File(path, "r")
    except OSError as exc:
        raise AnnDataError(f"cannot open {path} as an .h5ad (HDF5) file ({exc}); is it an AnnData "
                           "file?") from None
    with handle:
        obs = handle.get("obs")
        if obs is None:
            raise AnnDataError(f"{path} has no obs table; is it an AnnData .h5ad file?")
        if not isinstance(obs, h5py.Group) or obs.attrs.get("encoding-type") != "dataframe":
            return _read_old_format(path, column)
        present = [name for name in obs.attrs.get("column-order", [])]
        if column not in obs:
            raise AnnDataError(_missing_column(column, present))
        try:
            return read_elem(obs[column])
        except Exception as exc:  # anndata raises several types for unknown encodings
            raise AnnDataError(f"cannot read obs column {column!r} of {path}: {exc}") from None


def _read_old_format(path: Path, column: str) -> Any:
    """Files written by anndata before 0.7 keep obs as one compound dataset: read it backed."""
    import anndata

    adata = anndata.read_h5ad(path, backed="r")
    try:
        if column not in adata.obs.columns:
            raise AnnDataError(_missing_column(column, list(adata.obs.columns)))
        return adata.obs[column].copy()
    finally:
        adata.file.close()


def write_annotated_copy(
    source: str | Path, target: str | Path, columns: dict[str, Any]
) -> None:
    """A copy of `source` at `target` whose obs gains `columns` (name -> per-cell values).

    The file is copied as it is (X, layers and the rest never pass through memory) and only its
    obs group is rewritten; the copy is made beside `target` and renamed into place when complete.
    """
    import h5py
    from anndata.io import read_elem, write_elem

    target = Path(target)
    parent = target.parent if str(target.parent) else Path(".")
    if not parent.is_dir():
        raise AnnDataError(f"--h5ad-out {target}: directory {parent} does not exist; create it first")
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=parent)
    os.close(fd)
    try:
        shutil.copyfile(source, tmp)
        with h5py.File(tmp, "r+") as handle:
            if handle["obs"].attrs.get("encoding-type") != "dataframe":
                raise AnnDataError(f"{source} was written by anndata before 0.7; save it again with a "
                                   "current anndata (adata.write_h5ad) to annotate a copy")
            obs = read_elem(handle["obs"])
            for name, values in columns.items():
                obs[name] = values
            del handle["obs"]
            write_elem(handle, "obs", obs)
        publish_file(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)

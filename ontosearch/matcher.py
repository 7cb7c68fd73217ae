"""Free-text labels in, ranked ontology terms out.

Order of evidence, per label:
1. exact hits: the label's normalised keys (`normalize.query_keys`) equal to a term's normalised
   label or synonym (one `collection.get(where={"norm": {"$in": ...}})` per batch). A hit on a
   label ranks before a hit on a synonym; several hits are ordered by vector similarity;
2. vector similarity of the label's embedding to term labels and synonyms (one `query` call per
   batch with many embeddings), each term kept once at its best-matching text.

Everything needed is read from the collection itself, so this works the same on an embedded
PersistentClient and on a remote HttpClient behind the read-token proxy (which allows only the
read calls used here: get, query, count, and listing collections).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ontosearch.normalize import embedding_text, query_keys
from ontosearch.ontologies import OntologyError, _version_sort_key, resolve_ontology

DEFAULT_BATCH_SIZE = 256
# Vector candidates fetched per label: synonyms share terms, so ask for more than top_k records.
_OVERFETCH = 4
_EXTRA = 8


class MatcherError(ValueError):
    """A matching request that cannot be served (no collection, wrong embedder, bad arguments)."""


@dataclass(frozen=True)
class Match:
    term_id: str
    term_label: str
    score: float  # in [0, 1]; 1.0 for an exact label/synonym hit
    matched_text: str
    rank: int  # 1-based


def _collection_names(client: Any) -> list[str]:
    return [getattr(c, "name", c) for c in client.list_collections()]


def find_collection(client: Any, ontology: str, collection: str | None = None) -> Any:
    """The collection to match against: `collection` if named, else the newest `<ontology>_*` one."""
    names = _collection_names(client)
    if collection is not None:
        if collection not in names:
            raise MatcherError(
                f"collection {collection!r} does not exist on this server; "
                f"present: {', '.join(sorted(names)) or 'none'}"
            )
        return client.get_collection(collection, embedding_function=None)
    try:
        canonical = resolve_ontology(ontology)
    except OntologyError as exc:
        if ontology in names:  # an explicit collection name passed as the ontology
            return client.get_collection(ontology, embedding_function=None)
        raise MatcherError(str(exc)) from exc
    candidates = [name for name in names if name.startswith(canonical + "_")]
    if not candidates:
        raise MatcherError(
            f"no {canonical} collection on this server (collections: {', '.join(sorted(names)) or 'none'}); "
            f"build one with `python -m ontosearch build-snapshot --ontologies {canonical} --out DIR` "
            "and restore it, or let `annotate` build the local snapshot"
        )
    newest = max(candidates, key=lambda name: _version_sort_key(name[len(canonical) + 1:]))
    return client.get_collection(newest, embedding_function=None)


def check_embedder(collection: Any, embedder: Any | None) -> Any:
    """The embedder to query `collection` with; refuses one that differs from the collection's."""
    meta = collection.metadata or {}
    built_with = meta.get("embedder_name")
    if built_with is None:
        raise MatcherError(
            f"collection {collection.name!r} does not record the embedder it was built with; "
            "rebuild it with `python -m ontosearch build-snapshot`"
        )
    if embedder is None:
        from ontosearch.embedders import get_embedder

        return get_embedder(built_with)
    spec = embedder.spec()
    mismatched = [
        key for key in ("name", "dimensions", "pooling", "normalize")
        if f"embedder_{key}" in meta and key in spec and spec[key] != meta[f"embedder_{key}"]
    ]
    if mismatched:
        raise MatcherError(
            f"collection {collection.name!r} was built with embedder {built_with!r} "
            f"({meta.get('embedder_dimensions')}-d) but the query embedder is {spec.get('name')!r} "
            f"({spec.get('dimensions')}-d); differing: {', '.join(mismatched)}. Query with "
            f"{built_with!r} or rebuild the snapshot with {spec.get('name')!r}"
        )
    return embedder


def match(
    labels: Sequence[str],
    ontology: str,
    top_k: int = 3,
    client: Any = None,
    embedder: Any = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    collection: str | None = None,
    exact: bool = True,
) -> list[list[Match]]:
    """Rank ontology terms for each label; one list per input label, in input order.

    `ontology` is a name or alias (cl/cell_type, uberon/tissue, mondo/disease). Duplicate labels
    are matched once. Empty labels get an empty list. `client=None` connects with
    `ontosearch.connect()`; `embedder=None` uses the embedder the collection was built with.
    """
    if isinstance(labels, str):
        raise MatcherError("labels must be a sequence of strings, not one string; wrap it in a list")
    if top_k < 1:
        raise MatcherError(f"top_k must be at least 1, got {top_k}")
    if batch_size < 1:
        raise MatcherError(f"batch_size must be at least 1, got {batch_size}")
    if client is None:
        from ontosearch.connect import connect

        client = connect()
    coll = find_collection(client, ontology, collection)
    embedder = check_embedder(coll, embedder)
    cell_suffix = (coll.metadata or {}).get("ontology") == "cl"

    unique: dict[str, list[Match]] = {}
    for label in labels:
        if not isinstance(label, str):
            raise MatcherError(f"labels must be strings; got {type(label).__name__} {label!r}")
        if label.strip():
            unique.setdefault(label, [])
    pending = list(unique)
    total = coll.count()
    for start in range(0, len(pending), batch_size):
        batch = pending[start:start + batch_size]
        found_all = _match_batch(coll, embedder, batch, top_k, total, cell_suffix, exact)
        for label, found in zip(batch, found_all, strict=True):
            unique[label] = found
    return [list(unique.get(label, [])) if label.strip() else [] for label in labels]


def _match_batch(
    coll: Any, embedder: Any, batch: list[str], top_k: int, total: int, cell_suffix: bool, exact: bool
) -> list[list[Match]]:
    vectors = np.asarray(embedder.embed([embedding_text(label) for label in batch]), dtype=np.float32)
    keys = [query_keys(label, cell_suffix=cell_suffix) for label in batch] if exact else [[] for _ in batch]
    hits = _exact_hits(coll, {key for per_label in keys for key in per_label})

    n_results = min(total, top_k * _OVERFETCH + _EXTRA)
    results: list[list[Match]] = [[] for _ in batch]
    todo = list(range(len(batch)))
    while todo:
        answer = coll.query(
            query_embeddings=vectors[todo], n_results=n_results, include=["metadatas", "distances"]
        )
        retry = []
        for row, index in enumerate(todo):
            ranked = _rank(
                keys[index], hits, vectors[index], answer["metadatas"][row], answer["distances"][row]
            )
            if len(ranked) < top_k and n_results < total:
                retry.append(index)
            results[index] = [
                Match(term_id, label, score, text, rank)
                for rank, (term_id, label, score, text) in enumerate(ranked[:top_k], start=1)
            ]
        todo = retry
        n_results = min(total, n_results * 4)
    return results


def _exact_hits(coll: Any, keys: set[str]) -> dict[str, list[tuple[dict[str, Any], np.ndarray]]]:
    if not keys:
        return {}
    ordered = sorted(keys)
    where = {"norm": ordered[0]} if len(ordered) == 1 else {"norm": {"$in": ordered}}
    got = coll.get(where=where, include=["metadatas", "embeddings"])
    hits: dict[str, list[tuple[dict[str, Any], np.ndarray]]] = {}
    vectors = got["embeddings"] if got["embeddings"] is not None else []
    for meta, vector in zip(got["metadatas"] or [], vectors, strict=True):
        hits.setdefault(meta["norm"], []).append((meta, np.asarray(vector, dtype=np.float32)))
    return hits


def _rank(
    keys: list[str],
    hits: dict[str, list[tuple[dict[str, Any], np.ndarray]]],
    vector: np.ndarray,
    metadatas: list[dict[str, Any]],
    distances: list[float],
) -> list[tuple[str, str, float, str]]:
    """(term_id, term_label, score, matched_text), each term once, best first."""
    ranked: list[tuple[str, str, float, str]] = []
    seen: set[str] = set()
    exact: list[tuple[int, int, float, dict[str, Any]]] = []
    for priority, key in enumerate(keys):
        for meta, record_vector in hits.get(key, ()):
            similarity = float(np.dot(vector, record_vector))
            exact.append((priority, 0 if meta["kind"] == "label" else 1, -similarity, meta))
    for *_, meta in sorted(exact, key=lambda item: item[:3]):
        if meta["term_id"] not in seen:
            seen.add(meta["term_id"])
            ranked.append((meta["term_id"], meta["label"], 1.0, meta["text"]))
    for meta, distance in sorted(zip(metadatas, distances, strict=True), key=lambda item: item[1]):
        if meta["term_id"] in seen:
            continue
        seen.add(meta["term_id"])
        score = min(1.0, max(0.0, 1.0 - float(distance)))
        ranked.append((meta["term_id"], meta["label"], score, meta["text"]))
    return ranked

"""Turn an `Ontology` into one Chroma collection that holds everything the matcher needs.

Layout (the matcher and snapshot verification rely on it):

* collection name `<ontology>_<version>` (see `collection_name`), cosine space set explicitly;
* collection metadata: `ontology`, `version`, the embedder spec as `embedder_*` keys, the record
  layout version and whether synonyms have vectors;
* one record per term with id = the term id (`CL:0000815`), embedding of its label;
* with `synonyms=True` (the default; the accuracy bench shows why) one more record per synonym,
  id `<term id>#s<n>`, embedding of the synonym. Synonyms whose normalised form equals the label's
  or an earlier synonym's are skipped: they would only duplicate a vector;
* with `synonyms=True` also one record per curated alias of the term (`ontosearch.aliases`: lab
  shorthand such as "AT2" or "CD14 Mono" that the ontology's synonyms lack), id
  `<term id>#a<n>`, `kind` "alias", skipped like synonyms when it normalises like one; the
  collection metadata `aliases_sha256` names the alias table used ("" when none). A collection
  without alias records is still a valid layout-2 collection: it only lacks those exact hits;
* record metadata: `ontology`, `version`, `term_id`, `label`, `synonyms` (JSON list, on the
  label record only), `parents`
  (JSON list of direct parents), `descendants` (how many terms lie below), `specific` (a
  taxon-specific term), `kind` ("label"/"synonym"/"alias"),
  `text` (what was embedded), `norm` (`normalize(text)`) and `abbr`/`abbr_short` (the text's
  initialisms, "" if none). Exact label/synonym hits are one
  `collection.get(where={"norm": {"$in": keys}})` call and abbreviation hits one more, which the
  read-only proxy allows. No side files: a remote server and an embedded store answer the same.

Documents hold the label and definition, for people browsing the collection; they are never
embedded by Chroma (embeddings are always passed explicitly).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from ontosearch.aliases import alias_table_sha256, aliases_by_term
from ontosearch.normalize import initialisms, normalize
from ontosearch.ontologies import Ontology, Term

LAYOUT_VERSION = 2
SYNONYM_ID_SEPARATOR = "#s"
ALIAS_ID_SEPARATOR = "#a"
DEFAULT_BATCH_SIZE = 1024
# Texts per embedder call while indexing (several `collection.add` batches).
EMBED_CHUNK = 2048

SYNC_THRESHOLD = 2
# HNSW settings shipped with every collection. Chroma 1.x defaults are ef_search=100, M=16; a
# larger search ef costs little at this scale and keeps recall@10 against exact search high.
HNSW_METADATA: dict[str, Any] = {
    "hnsw:space": "cosine",
    "hnsw:construction_ef": 200,
    "hnsw:search_ef": 200,
    "hnsw:M": 16,
    # Chroma writes the HNSW index to disk only after an add call that brings `sync_threshold`
    # records (default 1000) since the last write; the rest stay in its SQLite log and are inserted
    # again by every process that opens the directory (chroma-core/chroma#7463, #6975: no call forces
    # the write). That re-insertion differs from process to process: on the 5,846-record CL collection
    # built with the default, 726 records were left to it, and the same query vector found a record of
    # the nearest 30 in one process of four and missed it in the other three. Two (Chroma's
    # smallest) writes the index after every add call, so a built collection is read as built,
    # the same in every process and task (`index_ontology` makes its last call at least two records).
    "hnsw:sync_threshold": SYNC_THRESHOLD,
}

_NAME_OK = re.compile(r"[^a-z0-9_]+")


def collection_name(ontology: str, version: str) -> str:
    """`cl` + `v2025-04-10` -> `cl_v2025_04_10`: a valid Chroma collection name (3-512 chars)."""
    onto = _NAME_OK.sub("_", ontology.strip().lower()).strip("_")
    ver = _NAME_OK.sub("_", version.strip().lower()).strip("_")
    if not onto or not ver:
        raise ValueError(f"cannot name a collection for ontology {ontology!r} version {version!r}")
    name = f"{onto}_{ver}"
    if len(name) < 3:
        name = name + "_v"
    return name[:512]


def embedder_metadata(embedder: Any) -> dict[str, Any]:
    """The embedder spec flattened to `embedder_<key>` scalars (Chroma metadata holds no dicts)."""
    spec = embedder.spec()
    out: dict[str, Any] = {}
    for key, value in spec.items():
        if value is None:
            continue
        out[f"embedder_{key}"] = value if isinstance(value, (str, int, float, bool)) else json.dumps(value)
    return out


def descendant_counts(ontology: Ontology) -> dict[str, int]:
    """How many terms lie below each term (through parents): a proxy for how general it is."""
    children: dict[str, list[str]] = {}
    for term in ontology.terms:
        for parent in term.parents:
            children.setdefault(parent, []).append(term.id)
    counts: dict[str, int] = {}
    for term in ontology.terms:
        seen: set[str] = set()
        stack = list(children.get(term.id, ()))
        while stack:
            child = stack.pop()
            if child not in seen:
                seen.add(child)
                stack.extend(children.get(child, ()))
        counts[term.id] = len(seen)
    return counts


def _records(ontology: Ontology, synonyms: bool) -> Iterator[tuple[str, str, dict[str, Any], str]]:
    descendants = descendant_counts(ontology)
    aliases = aliases_by_term(ontology.name) if synonyms else {}
    for term in ontology.terms:
        base = {**_term_metadata(ontology, term), "descendants": descendants.get(term.id, 0)}
        label_norm = normalize(term.label)
        # The synonym list only on the label record: repeated on every synonym record it would
        # grow metadata (and every query's payload) with the square of a term's synonym count.
        label_meta = {
            **base, "synonyms": json.dumps(list(term.synonyms), ensure_ascii=False),
            "kind": "label", "text": term.label, "norm": label_norm, **_abbr(term.label),
        }
        yield term.id, term.label, label_meta, _document(term)
        if not synonyms:
            continue
        seen = {label_norm}
        # Curated aliases (`ontosearch.aliases`) carry no initialisms: they are shorthand already,
        # and the initials of a lay name ("lazy eye") are not how anyone abbreviates the term, so
        # they would only add wrong abbreviation hits. They come before the synonyms: an alias the
        # term also has as a synonym is indexed once, as an alias, which the matcher ranks above
        # another term's synonym of the same text ("RA").
        yield from _name_records(term, base, seen, aliases.get(term.id, ()), "alias", ALIAS_ID_SEPARATOR,
                                 initialisms=False)
        yield from _name_records(term, base, seen, term.synonyms, "synonym", SYNONYM_ID_SEPARATOR)


def _name_records(
    term: Term,
    base: dict[str, Any],
    seen: set[str],
    names: Sequence[str],
    kind: str,
    separator: str,
    initialisms: bool = True,
) -> Iterator[tuple[str, str, dict[str, Any], str]]:
    """One record per further name of `term` (synonym or alias), shaped like its label record.

    A name that normalises like one already emitted for the term (in `seen`) adds nothing and is
    skipped; ids keep the name's position in `names`, so they are stable across builds.
    """
    for index, name in enumerate(names):
        norm = normalize(name)
        if not norm or norm in seen:
            continue
        seen.add(norm)
        abbreviations = _abbr(name) if initialisms else {"abbr": "", "abbr_short": ""}
        yield (
            f"{term.id}{separator}{index}",
            name,
            {**base, "kind": kind, "text": name, "norm": norm, **abbreviations},
            name,
        )


def _term_metadata(ontology: Ontology, term: Term) -> dict[str, Any]:
    return {
        "ontology": ontology.name,
        "version": ontology.version,
        "term_id": term.id,
        "label": term.label,
        "parents": json.dumps(list(term.parents)),
        "specific": bool(term.taxon_specific),
    }


def _abbr(text: str) -> dict[str, str]:
    full, short = initialisms(text)
    return {"abbr": full, "abbr_short": short}


def _document(term: Term) -> str:
    return f"{term.label}. {term.definition}" if term.definition else term.label


def count_records(ontology: Ontology, synonyms: bool = True) -> int:
    """How many vectors `index_ontology` will write (for progress bars and size estimates)."""
    return sum(1 for _ in _records(ontology, synonyms))


@dataclass
class PreparedRecords:
    """An ontology's records, their embedding already under way when the embedder is a pool.

    A build prepares the next ontology while it inserts the current one, so the embedding workers
    never wait for the indexing process to finish a collection and load the next ontology.
    """

    ontology: Ontology
    synonyms: bool
    records: list[tuple[str, str, dict[str, Any], str]]
    tickets: list[tuple[int, Any]] = field(default_factory=list)  # (start, ticket) per submitted chunk


def prepare_records(ontology: Ontology, embedder: Any, synonyms: bool = True) -> PreparedRecords:
    """The ontology's records; with an `EmbedderPool` every chunk is submitted for embedding now."""
    records = list(_records(ontology, synonyms))
    prepared = PreparedRecords(ontology, synonyms, records)
    submit = getattr(embedder, "submit", None)
    if submit is not None:
        prepared.tickets = [(start, submit([text for _, text, _, _ in records[start:start + EMBED_CHUNK]]))
                            for start in range(0, len(records), EMBED_CHUNK)]
    return prepared


def index_ontology(
    client: Any,
    ontology: Ontology,
    embedder: Any,
    progress: bool = True,
    batch_size: int = DEFAULT_BATCH_SIZE,
    synonyms: bool = True,
    name: str | None = None,
    prepared: PreparedRecords | None = None,
) -> dict[str, Any]:
    """Create the ontology's collection (replacing one of the same name) and fill it.

    `prepared` (from `prepare_records` with the same ontology, embedder and `synonyms`) supplies the
    records and their embedding already under way. Returns {"name", "ontology", "source_version",
    "terms", "records"} for the snapshot manifest.
    """
    if prepared is not None and (prepared.ontology is not ontology or prepared.synonyms != synonyms):
        raise ValueError("prepared records belong to another ontology or synonyms setting")
    name = name or collection_name(ontology.name, ontology.version)
    metadata: dict[str, Any] = {
        **HNSW_METADATA,
        **embedder_metadata(embedder),
        "ontology": ontology.name,
        "version": ontology.version,
        "layout": LAYOUT_VERSION,
        "synonym_vectors": bool(synonyms),
        # Which curated alias table (ontosearch/data/aliases) the records came from; "" for none.
        "aliases_sha256": alias_table_sha256(ontology.name) if synonyms else "",
        "terms": len(ontology.terms),
    }
    existing = {getattr(c, "name", c) for c in client.list_collections()}
    if name in existing:
        client.delete_collection(name)
    collection = client.create_collection(name=name, metadata=metadata, embedding_function=None)

    prepared = prepared or prepare_records(ontology, embedder, synonyms)
    records = prepared.records
    step = max(1, min(batch_size, _max_batch(client)))
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(records), desc=f"indexing {name}", unit="rec")
    # The last records added, with their vectors: see the end of the loop.
    tail: list[tuple[tuple[str, str, dict[str, Any], str], Any]] = []
    last_call = 0
    try:
        for start, vectors in _embedded_chunks(embedder, prepared):
            for offset in range(0, len(vectors), step):
                end = min(offset + step, len(vectors))
                chunk = records[start + offset:start + end]
                collection.add(
                    ids=[record_id for record_id, _, _, _ in chunk],
                    embeddings=vectors[offset:end],
                    metadatas=[meta for _, _, meta, _ in chunk],
                    documents=[document for _, _, _, document in chunk],
                )
                last_call = len(chunk)
                last = slice(-SYNC_THRESHOLD, None)
                tail = (tail + list(zip(chunk[last], vectors[offset:end][last], strict=True)))[last]
                if bar is not None:
                    bar.update(len(chunk))
        if 0 < last_call < SYNC_THRESHOLD <= len(tail):
            # A last call smaller than the sync threshold leaves the index unwritten since the call
            # before; writing the last records again, unchanged, crosses it (HNSW_METADATA).
            collection.upsert(
                ids=[record[0] for record, _ in tail],
                embeddings=[vector for _, vector in tail],
                metadatas=[record[2] for record, _ in tail],
                documents=[record[3] for record, _ in tail],
            )
    finally:
        if bar is not None:
            bar.close()
    count = collection.count()
    if count != len(records):
        raise RuntimeError(f"collection {name} holds {count} records after indexing, expected {len(records)}")
    return {
        "name": name,
        "ontology": ontology.name,
        "source_version": ontology.version,
        "terms": len(ontology.terms),
        "records": count,
    }


def _embedded_chunks(embedder: Any, prepared: PreparedRecords) -> Iterator[tuple[int, Any]]:
    """(start, vectors) for consecutive chunks of the records, `EMBED_CHUNK` texts each.

    Chunks larger than one `collection.add` let the embedder sort more texts by token length (less
    padding, fewer batches). A pool (`ontosearch.embed_pool.EmbedderPool`) got every chunk in
    `prepare_records` and embeds ahead in other processes while this one inserts.
    """
    if prepared.tickets:
        for start, ticket in prepared.tickets:
            yield start, embedder.result(ticket)
        return
    records = prepared.records
    for start in range(0, len(records), EMBED_CHUNK):
        yield start, embedder.embed([text for _, text, _, _ in records[start:start + EMBED_CHUNK]])


def _max_batch(client: Any) -> int:
    try:
        return int(client.get_max_batch_size())
    except Exception:  # older clients / proxies without the pre-flight endpoint
        return 1000

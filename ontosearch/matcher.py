"""Free-text labels in, ranked ontology terms out.

Order of evidence, per label (each term appears once, at its best evidence):
1. exact hits (score 1.0): the label's normalised keys (`normalize.query_keys`) equal a term's
   normalised label or synonym; one `collection.get(where={"norm": {"$in": ...}})` per batch.
   Label hits rank before synonym hits, general terms before taxon-specific ones ("(Mmus)",
   non-human animal diseases), then by vector similarity;
2. abbreviation hits (score 0.9), only for labels without an exact hit that are a single short
   token ("OPCs", "MAIT cells", "COPD"): the token equals the initialism of a term's label or
   synonym. Ranked by how many of the term's names give that initialism, then similarity;
3. the dense channel: vector similarity of the label's embedding to term labels and synonyms
   (one `query` call per batch with many embeddings), scored by cosine similarity. When the query
   names a general term, the nearest vectors are often its subtypes ("bipolar cells" ->
   "ON-bipolar cell"), so a parent found among the candidates with nearly the same similarity is
   moved above its child;
4. the lexical channel (`ontosearch.lexical`), for labels without an exact hit: BM25 over every
   term's names, read from the collection's records, with the ontology's own word equivalences
   ("renal"/"kidney"). Its candidates join the dense ones, scored by their cosine similarity too.

`fuse` ranks the channels' candidates in one place: exact hits, then abbreviation hits, then the
dense and lexical candidates by similarity, where a term one of whose names holds every word of
the label ("Lung Fibroblasts": "fibroblast of lung") gains up to LEXICAL_WEIGHT, in proportion to
how much of that name the label explains (so "cochlear outer hair cell" rises for "outer hair
cells" but a longer "tuft cell of pancreatic duct" does not pass "pancreatic ductal cell"). A
narrower term whose name adds words the label lacks stays below its ancestor ("manic bipolar
affective disorder" for "bipolar affective disorder"): specific over general only when the label
names the specific term exactly.

Scores never increase with rank (a vector hit ranked below an abbreviation hit is capped at 0.9).
Each match says how it was found (`match_type`: label, synonym, alias, abbreviation, vector, or
lexical when word overlap placed it) and how sure it is (`confidence`: high, good, medium, low;
calibrated in `ontosearch.confidence`).

A label that is an ontology id (`CL:0000236`, `CL_0000236`, the OBO PURL) is looked up instead of
matched (`ontosearch.term_ids`): match_type `id`, or `replaced_id` for an obsolete id's replacement.

A label whose exact hits are all one term is not embedded: that term's stored label vector finds
the neighbours ranked after it. Most labels in real files are exact hits, so this skips most of the
embedding work. A `Matcher` keeps answers and fetched records across calls on one collection.

Everything needed is read from the collection itself, so this works the same on an embedded
PersistentClient and on a remote HttpClient behind the read-token proxy (which allows only the
read calls used here: get, query, count, and listing collections).
"""

from __future__ import annotations

import functools
import json
from collections import OrderedDict, deque
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np

from ontosearch.aliases import expand_abbreviations
from ontosearch.confidence import HIGH, classify
from ontosearch.label_io import STATUS_CONSIDER, STATUS_ERROR, STATUS_OK
from ontosearch.lexical import Fit, LexicalHit, LexicalIndex, index_for
from ontosearch.normalize import abbreviation_key, embedding_text, query_keys, rewrite_label
from ontosearch.ontologies import _PREFIXES as ONTOLOGY_PREFIXES
from ontosearch.ontologies import OntologyError, _version_sort_key, id_prefix, resolve_ontology
from ontosearch.term_ids import ObsoleteLookupError, considered, parse_term_id, replacement_chain

DEFAULT_BATCH_SIZE = 256
EXACT_SCORE = 1.0
ABBREVIATION_SCORE = 0.9
# Among exact hits on one key: a term's own label first, then a curated alias (the tables may take
# an abbreviation away from another term's synonym: "RA" is rheumatoid arthritis, not the
# "refractory anaemia" synonym of a myelodysplastic syndrome), then synonyms.
_EXACT_KIND_ORDER = {"label": 0, "alias": 1, "synonym": 2}
# Among terms an initialism fits, one with subtypes is likelier meant; beyond a few it stops
# mattering (else near-root classes would win every tie). 3 was best of 0/3/10/unlimited on the
# held-out sets, by one label each in CL and MONDO: a weak preference, not a tuned optimum.
ABBREVIATION_GENERALITY_CAP = 3
# A taxon-specific term ranks as if this much less similar (a general term wins a near tie).
SPECIFIC_PENALTY = 0.05
# A parent moves above its child when its similarity is at most this much lower.
PARENT_MARGIN = 0.05
# Near ties go to the more general term: + weight * log(1 + number of terms below it).
# Candidates within this margin of the best, among the first SIBLING_WINDOW, are near-tied
# siblings; the parent of the best that two of them share is ranked first.
SIBLING_MARGIN = 0.03
SIBLING_WINDOW = 10
# Vector candidates fetched per label: synonyms share terms and parents must be among the
# candidates to be promoted, so ask for more records than top_k.
_OVERFETCH = 4
_MIN_FETCH = 30
# Nearest terms (beyond top_k) whose metadata is fetched: room for the taxon and parent rules.
_KEEP_EXTRA = 12
# The most a dense or lexical candidate gains when one of its names holds every word of the label
# (times the share of that name's words the label explains), in units of cosine similarity.
# Learned on the real-world sets and variants of all three ontologies (MiniLM): 0.05 to 0.15 lose
# no label anywhere, 0.15 fixes the most (17 rows), 0.2 loses one ("retinas").
LEXICAL_WEIGHT = 0.15
# Terms the lexical channel adds per label (beside the dense channel's top_k + _KEEP_EXTRA).
LEXICAL_CANDIDATES = 10
# Distinct labels matched per round (one embedding call, bounded memory for any input size), and
# rounds embedded ahead of the one being finished (`Matcher._match_rounds`).
ROUND_LABELS = 512
ROUNDS_AHEAD = 1
# Bounds of a Matcher's caches: answers per (label, top_k), and records by id.
ANSWER_CACHE = 200_000
RECORD_CACHE = 300_000


# How a match was found: an exact hit on the term's label, synonym or curated alias, an initialism
# of its label or synonym, vector similarity; or the label was the term's id, or an obsolete id the
# ontology replaces with (or suggests) the term.
MATCH_TYPES = ("label", "synonym", "alias", "abbreviation", "vector", "lexical", "id", "replaced_id")


class MatcherError(ValueError):
    """A matching request that cannot be served (no collection, wrong embedder, bad arguments)."""


@dataclass(frozen=True)
class Match:
    term_id: str
    term_label: str
    score: float  # in [0, 1]; 1.0 for an exact label/synonym hit
    matched_text: str
    rank: int  # 1-based
    match_type: str = "vector"  # one of MATCH_TYPES
    confidence: str = ""  # one of confidence.CONFIDENCE_CLASSES (calibrated there)


class Answer(list):
    """The ranked matches of one label, and how the label was answered.

    A list of `Match`, so code that treats answers as plain lists keeps working, with a `status`:
    "ok"; "consider" (an obsolete id whose ontology names no replacement: the matches are the terms
    it suggests considering, `reason` says so); or "error" (an id that is no term of the ontology:
    no matches, `reason` says why). Result writers turn the status and reason into the row's columns.
    """

    def __init__(self, matches: Sequence[Match] = (), status: str = STATUS_OK, reason: str = "") -> None:
        super().__init__(matches)
        self.status = status
        self.reason = reason

    def copy(self) -> Answer:
        return Answer(self, self.status, self.reason)


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


Hit = tuple[dict[str, Any], np.ndarray]


@dataclass
class _Round:
    """A round of distinct labels before embedding: what `Matcher._prepare` found for `_finish`."""

    labels: list[str]
    keys: dict[str, list[str]]
    hits: dict[str, list[Hit]]
    abbreviations: dict[str, str | None]
    abbr_hits: dict[str, list[Hit]]
    source_of: dict[str, Any]
    anchors: dict[str, Hit]
    texts: list[str]


class Matcher:
    """Matching against one collection, keeping what it learns for later calls.

    `annotate` and the workflow's chunks call this many times on the same collection; it keeps
    (bounded) the answers per label, the records' metadata and the terms fetched as parents, so
    a label repeated across chunks costs nothing and popular records are fetched once. A built
    collection never changes (a rebuild makes a new collection), so nothing cached goes stale.
    Not thread-safe: one Matcher per thread.
    """

    def __init__(
        self,
        client: Any,
        ontology: str,
        collection: str | None = None,
        embedder: Any = None,
        exact: bool = True,
    ) -> None:
        self.client = client
        self.collection = find_collection(client, ontology, collection)
        self.embedder = check_embedder(self.collection, embedder)
        meta = self.collection.metadata or {}
        self.exact = exact
        self._suffixes = {
            "cell_suffix": meta.get("ontology") == "cl",
            "disease_suffix": meta.get("ontology") == "mondo",
        }
        self._abbreviations = exact and int(meta.get("layout", 1)) >= 2
        self._ontology = meta.get("ontology")
        # Abbreviations inside labels are spelt out from the alias table only for a collection
        # built with one: a labels-only collection (or one built before the tables) knows none.
        self._alias_ontology = self._ontology if meta.get("aliases_sha256") else None
        self._total: int | None = None
        self._version = meta.get("version")
        self._answers: OrderedDict[tuple[str, int], Answer] = OrderedDict()
        self._metadata: dict[str, dict[str, Any]] = {}
        self._terms: dict[str, Hit] = {}
        self._records: dict[str, Hit] = {}
        self._lexical: LexicalIndex | None = None

    @property
    def total(self) -> int:
        if self._total is None:
            self._total = self.collection.count()
        return self._total

    def match(self, labels: Sequence[str], top_k: int = 3, batch_size: int = DEFAULT_BATCH_SIZE
              ) -> list[Answer]:
        """One ranked `Answer` (a list of `Match`) per input label, in input order; blank labels get an
        empty one. Labels that are ontology ids are looked up, the others matched."""
        _check_arguments(labels, top_k, batch_size)
        todo: dict[str, None] = {}
        for label in labels:
            if not isinstance(label, str):
                raise MatcherError(f"labels must be strings; got {type(label).__name__} {label!r}")
            if label.strip() and (label, top_k) not in self._answers:
                todo[label] = None
        ids = {label: curie for label in todo if (curie := parse_term_id(label)) is not None}
        pending = [label for label in todo if label not in ids]
        fresh: dict[str, Answer] = self._answer_ids(ids, top_k) if ids else {}
        if pending:
            fresh.update(self._match_rounds(pending, top_k, batch_size))
        out = []
        for label in labels:
            if not label.strip():
                out.append(Answer())
                continue
            found = fresh.get(label)
            if found is None:
                found = self._answers[(label, top_k)]
                self._answers.move_to_end((label, top_k))
            out.append(found.copy())
        self._remember(fresh, top_k)
        return out

    def _remember(self, fresh: dict[str, Answer], top_k: int) -> None:
        for label, found in fresh.items():
            self._answers[(label, top_k)] = found
        while len(self._answers) > ANSWER_CACHE:
            self._answers.popitem(last=False)
        if len(self._metadata) > RECORD_CACHE:
            self._metadata.clear()
        if len(self._terms) > RECORD_CACHE:
            self._terms.clear()
        if len(self._records) > RECORD_CACHE:
            self._records.clear()

    def _answer_ids(self, ids: dict[str, str], top_k: int) -> dict[str, Answer]:
        """Answers for labels that are ids (label -> CURIE): the live term, an obsolete id's
        replacement or the terms to consider, or an error saying why the id has no term."""
        ontology = self._ontology or _ontology_of(self.collection.name)
        if ontology is None:
            reason = (f"collection {self.collection.name!r} does not record its ontology, so ids cannot be "
                      "looked up in it; rebuild it with `python -m ontosearch build-snapshot`")
            return {label: Answer(status=STATUS_ERROR, reason=reason) for label in ids}
        own = id_prefix(ontology) + ":"
        live = self._fetch_terms({curie for curie in ids.values() if curie.startswith(own)})
        out: dict[str, Answer] = {}
        upgrades: dict[str, _Upgrade] = {}
        for label, curie in ids.items():
            if not curie.startswith(own):
                out[label] = Answer(status=STATUS_ERROR, reason=_foreign_id_reason(curie, ontology))
            elif curie in live:
                term_label = live[curie][0]["label"]
                out[label] = Answer([Match(curie, term_label, EXACT_SCORE, label, 1, "id", HIGH)])
            else:
                plan = _obsolete_plan(ontology, self._version, curie, top_k)
                if isinstance(plan, Answer):
                    out[label] = plan
                else:
                    upgrades[label] = plan
        found = self._fetch_terms({term_id for _, targets, _ in upgrades.values() for term_id in targets})
        for label, (status, targets, reason) in upgrades.items():
            present = [term_id for term_id in targets if term_id in found]
            if not present:
                reason = f"{reason}, which this collection does not hold"
                out[label] = Answer(status=STATUS_ERROR, reason=reason)
                continue
            suggested = status == STATUS_CONSIDER
            matches = [
                Match(term_id, found[term_id][0]["label"], EXACT_SCORE, label, rank, "replaced_id",
                      classify("replaced_id", rank, 1.0, suggested=suggested))
                for rank, term_id in enumerate(present, start=1)
            ]
            out[label] = Answer(matches, status, reason if status == STATUS_CONSIDER else "")
        return out

    def _match_rounds(self, labels: list[str], top_k: int, batch_size: int) -> dict[str, Answer]:
        """Match distinct labels in rounds of `ROUND_LABELS`, embedding one round ahead.

        A round's exact lookups, queries and fusion run on this thread while a worker thread embeds
        the next round (onnxruntime and the HTTP client release the GIL), so the embedder and the
        rest of matching share the cores instead of taking turns. No answer depends on the round a
        label is in.
        """
        rounds = [labels[start:start + ROUND_LABELS] for start in range(0, len(labels), ROUND_LABELS)]
        if len(rounds) == 1:  # nothing to overlap: no worker thread
            prepared = self._prepare(rounds[0], batch_size)
            return self._finish(prepared, self._embed(prepared.texts), top_k, batch_size)
        found: dict[str, Answer] = {}
        ahead: deque[tuple[_Round, Future[np.ndarray]]] = deque()

        def finish_oldest() -> None:
            prepared, embedded = ahead.popleft()
            found.update(self._finish(prepared, embedded.result(), top_k, batch_size))

        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="ontosearch-match") as pool:
            for batch in rounds:
                prepared = self._prepare(batch, batch_size)
                ahead.append((prepared, pool.submit(self._embed, prepared.texts)))
                if len(ahead) > ROUNDS_AHEAD:
                    finish_oldest()
            while ahead:
                finish_oldest()
        return found

    def _embed(self, texts: list[str]) -> np.ndarray:
        if not texts:
            return np.empty((0, 0), dtype=np.float32)
        return np.asarray(self.embedder.embed(texts), dtype=np.float32)

    def _prepare(self, labels: list[str], batch_size: int) -> _Round:
        """A round's exact and abbreviation hits, and the texts to embed for labels without one term.

        A label with exact hits on exactly one term needs no embedding: the term's stored label
        vector stands in for it when finding the neighbours ranked after it.
        """
        coll = self.collection
        rewrites = {
            label: rewrites_of(label, self._ontology, self._alias_ontology) if self.exact else []
            for label in labels
        }
        keys = {
            label: _keys([label, *rewrites[label]], self._suffixes) if self.exact else [] for label in labels
        }
        hits: dict[str, list[Hit]] = {}
        for start in range(0, len(labels), batch_size):
            batch = labels[start:start + batch_size]
            hits.update(_hits(coll, "norm", {key for label in batch for key in keys[label]}))
        abbreviations: dict[str, str | None] = {
            label: (
                abbreviation_key(label)
                if self._abbreviations and not any(key in hits for key in keys[label]) else None
            )
            for label in labels
        }
        abbr_keys = sorted({key for key in abbreviations.values() if key})
        abbr_hits: dict[str, list[Hit]] = {}
        for start in range(0, len(abbr_keys), batch_size):
            abbr_hits.update(_hits(coll, ("abbr", "abbr_short"), set(abbr_keys[start:start + batch_size])))

        # Each label's query vector comes from a "source": its embedding text, or its one exact term.
        source_of: dict[str, Any] = {}
        anchors: dict[str, Hit] = {}
        to_embed: dict[str, None] = {}
        for label in labels:
            anchor = _single_term_hit(keys[label], hits)
            if anchor is not None:
                term_id = anchor[0]["term_id"]
                if term_id not in anchors or anchor[0].get("kind") == "label":
                    anchors[term_id] = anchor
                source_of[label] = ("term", term_id)
            else:
                text = embedding_text(rewrites[label][0] if rewrites[label] else label)
                source_of[label] = ("text", text)
                to_embed[text] = None
        return _Round(labels, keys, hits, abbreviations, abbr_hits, source_of, anchors, list(to_embed))

    def _finish(self, prepared: _Round, embedded: np.ndarray, top_k: int, batch_size: int
                ) -> dict[str, Answer]:
        """A round's answers, given the vectors of its texts: vector queries, lexical channel, fusion."""
        labels, keys, hits, source_of = prepared.labels, prepared.keys, prepared.hits, prepared.source_of
        anchors = prepared.anchors
        vectors: dict[Any, np.ndarray] = {}
        # A synonym or alias hit stands for its term: the term's label vector finds its neighbours
        # (shorthand such as "AT2" embeds poorly; the label it stands for does not).
        label_records = self._fetch_terms(
            {term_id for term_id, (meta, _) in anchors.items() if meta.get("kind") != "label"}
        )
        for term_id, (_meta, vector) in anchors.items():
            vectors[("term", term_id)] = label_records[term_id][1] if term_id in label_records else vector
        for text, vector in zip(prepared.texts, embedded, strict=True):
            vectors[("text", text)] = vector

        sources = list(vectors)
        candidates: dict[Any, list[Candidate]] = {}
        for start in range(0, len(sources), batch_size):
            batch = sources[start:start + batch_size]
            candidates.update(self._candidates(batch, np.stack([vectors[s] for s in batch]), top_k))

        # The lexical channel, for labels without an exact hit, asked with the text that was embedded.
        worded = {
            label: source_of[label][1] for label in labels
            if self.exact and source_of[label][0] == "text" and not any(key in hits for key in keys[label])
        }
        lexical, fits = self._lexical_candidates(worded, candidates, vectors) if worded else ({}, {})

        found: dict[str, Answer] = {}
        for label in labels:
            source = source_of[label]
            abbreviated = prepared.abbr_hits.get(prepared.abbreviations[label] or "", [])
            ranked = fuse(keys[label], hits, abbreviated, vectors[source], candidates[source],
                          lexical.get(label, []), fits.get(label, {}))
            # The margin to the runner-up, from the full ranking so it does not depend on top_k.
            gap = ranked[0][2] - ranked[1][2] if len(ranked) > 1 else 1.0
            found[label] = Answer([
                Match(term_id, term_label, score, text, rank, match_type, classify(match_type, rank, gap))
                for rank, (term_id, term_label, score, text, match_type) in enumerate(ranked[:top_k], start=1)
            ])
        return found

    def _lexical_candidates(
        self, texts: dict[str, str], dense: dict[Any, list[Candidate]], vectors: dict[Any, np.ndarray]
    ) -> tuple[dict[str, list[Candidate]], dict[str, dict[str, Fit]]]:
        """Per label (-> the text it was embedded as): the lexical channel's terms that the dense
        channel lacks and one of whose names holds every word of the text, with their cosine
        similarity, and the fits of every candidate that holds them (`LexicalIndex.holding`).

        A lexical term holding fewer of the words gains nothing in the fusion and is seldom as
        similar as the dense candidates (the dense channel returns the nearest records), so it is
        left out and its vector never fetched: 0.2 s of 10,000 labels that need embedding. Measured
        on the 2,416 distinct labels of the bench sets, that changed ranks 3 to 5 of 3 labels and
        no first match."""
        if self._lexical is None:
            self._lexical = index_for(self.collection)
        index = self._lexical
        labels = list(texts)
        searched = index.search([texts[label] for label in labels], LEXICAL_CANDIDATES)
        fits: dict[str, dict[str, Fit]] = {}
        held: dict[str, list[LexicalHit]] = {}
        for label, hits in zip(labels, searched, strict=True):
            dense_terms = {meta["term_id"] for meta, _ in dense[("text", texts[label])]}
            fits[label] = index.holding(texts[label], dense_terms | {hit.term_id for hit in hits})
            held[label] = [
                hit for hit in hits if hit.term_id not in dense_terms and hit.term_id in fits[label]
            ]
        records = self._fetch_records({hit.record_id for hits in held.values() for hit in hits})
        extra: dict[str, list[Candidate]] = {}
        for label in labels:
            vector = vectors[("text", texts[label])]
            extra[label] = [
                (records[hit.record_id][0], _similarity(vector, records[hit.record_id][1]))
                for hit in held[label] if hit.record_id in records
            ]
        return extra, fits

    def _fetch_records(self, record_ids: set[str]) -> dict[str, Hit]:
        """Records (any kind) by id, with their vectors."""
        missing = sorted(record_ids - self._records.keys())
        if missing:
            got = self.collection.get(ids=missing, include=["metadatas", "embeddings"])
            vectors = got["embeddings"] if got["embeddings"] is not None else []
            for record_id, meta, vector in zip(got["ids"], got["metadatas"] or [], vectors, strict=True):
                self._records[record_id] = (meta, np.asarray(vector, dtype=np.float32))
        return {record_id: self._records[record_id] for record_id in record_ids if record_id in self._records}

    def _candidates(self, sources: list[Any], vectors: np.ndarray, top_k: int) -> dict[Any, list[Candidate]]:
        """Vector candidates per source, parents promoted; asks for more when too few terms come back."""
        coll = self.collection
        total = self.total
        n_results = min(total, max(top_k * _OVERFETCH, _MIN_FETCH))
        out: dict[Any, list[Candidate]] = {}
        todo = list(range(len(sources)))
        while todo:
            # Distances only: metadata for every returned record would dominate the query's cost.
            answer = coll.query(query_embeddings=vectors[todo], n_results=n_results, include=["distances"])
            nearest = {
                index: _nearest_records(answer["ids"][row], answer["distances"][row], top_k + _KEEP_EXTRA)
                for row, index in enumerate(todo)
            }
            wanted = {record_id for found in nearest.values() for record_id, _ in found}
            metadata = self._fetch_metadata(wanted)
            candidates = {
                index: _vector_candidates(
                    [metadata[record_id] for record_id, _ in found if record_id in metadata],
                    [distance for record_id, distance in found if record_id in metadata],
                )
                for index, found in nearest.items()
            }
            shared = {index: _shared_parent(found) for index, found in candidates.items()}
            missing = {
                parent for index, parent in shared.items()
                if parent and parent not in {meta["term_id"] for meta, _ in candidates[index]}
            }
            parents = self._fetch_terms(missing)
            retry = []
            for index in todo:
                found = _promote_parents(candidates[index])
                if shared[index]:
                    found = _put_first(found, shared[index], parents, vectors[index])
                out[sources[index]] = found
                if len(found) < top_k and n_results < total:
                    retry.append(index)
            todo = retry
            n_results = min(total, n_results * 4)
        return out

    def _fetch_metadata(self, record_ids: set[str]) -> dict[str, dict[str, Any]]:
        missing = sorted(record_ids - self._metadata.keys())
        if missing:
            got = self.collection.get(ids=missing, include=["metadatas"])
            self._metadata.update(zip(got["ids"], got["metadatas"], strict=True))
        known = self._metadata
        return {record_id: known[record_id] for record_id in record_ids if record_id in known}

    def _fetch_terms(self, term_ids: set[str]) -> dict[str, Hit]:
        """Label records of `term_ids` (a label record's id is its term id)."""
        missing = sorted(term_ids - self._terms.keys())
        if missing:
            got = self.collection.get(ids=missing, include=["metadatas", "embeddings"])
            vectors = got["embeddings"] if got["embeddings"] is not None else []
            for meta, vector in zip(got["metadatas"] or [], vectors, strict=True):
                self._terms[meta["term_id"]] = (meta, np.asarray(vector, dtype=np.float32))
        return {term_id: self._terms[term_id] for term_id in term_ids if term_id in self._terms}


def rewrites_of(label: str, ontology: str | None, alias_ontology: str | None = None) -> list[str]:
    """The label's rewrites, best first: with its abbreviations spelt out when the alias table of
    `alias_ontology` explains them ("Mesenteric LN" -> "Mesenteric lymph node"), then the style
    rewrites of `ontology`."""
    expanded = expand_abbreviations(label, alias_ontology)
    if expanded is None:
        return rewrite_label(label, ontology)
    out = [*rewrite_label(expanded, ontology), expanded, *rewrite_label(label, ontology)]
    return [text for index, text in enumerate(out) if text != label and text not in out[:index]]


def _keys(texts: list[str], suffixes: dict[str, bool]) -> list[str]:
    """Lookup keys of a label and then of its rewrites, most literal first, each once."""
    return list(dict.fromkeys(key for text in texts for key in query_keys(text, **suffixes)))


# (status of the answer, the ids of the terms to fetch, why): an obsolete id's way to live terms.
_Upgrade = tuple[str, list[str], str]


def _obsolete_plan(ontology: str, version: str | None, curie: str, top_k: int) -> Answer | _Upgrade:
    """For an id of the ontology that the collection lacks: the terms to answer with, or the error."""
    where = f"{ontology} {version or ''}".strip()
    try:
        entry, target = replacement_chain(ontology, version, curie)
    except ObsoleteLookupError as exc:
        return Answer(status=STATUS_ERROR, reason=f"{curie} is not a live {where} term; {exc}")
    if entry is None:
        return Answer(status=STATUS_ERROR,
                      reason=f"{curie} is not a term of {where} (neither live nor obsolete); check the id")
    if target is not None:
        return STATUS_OK, [target], f"{curie} ({entry.label!r}) is obsolete, replaced by {target}"
    suggested = considered(ontology, version, entry)
    if suggested:
        return STATUS_CONSIDER, suggested[:top_k], (
            f"{curie} ({entry.label!r}) is obsolete and has no replacement; {where} suggests "
            f"considering {', '.join(suggested)}")
    return Answer(status=STATUS_ERROR, reason=(
        f"{curie} ({entry.label!r}) is obsolete and {where} names no replacement or term to consider; "
        "choose a term by its label"))


def _ontology_of(collection_name: str) -> str | None:
    """The ontology a collection named `<ontology>_<version>` holds, when its metadata does not say."""
    head = collection_name.split("_", 1)[0]
    return head if head in ONTOLOGY_PREFIXES else None


def _foreign_id_reason(curie: str, ontology: str) -> str:
    prefix = curie.split(":", 1)[0]
    other = next((name for name, own in ONTOLOGY_PREFIXES.items() if own == prefix), None)
    if other is not None:
        return f"{curie} is a {other} id, not a {ontology} one; annotate it against {other}"
    own = id_prefix(ontology)
    return f"{curie} is a {prefix} id; this collection holds {ontology} terms ({own}:...) only"


def _check_arguments(labels: Sequence[str], top_k: int, batch_size: int) -> None:
    if isinstance(labels, str):
        raise MatcherError("labels must be a sequence of strings, not one string; wrap it in a list")
    if top_k < 1:
        raise MatcherError(f"top_k must be at least 1, got {top_k}")
    if batch_size < 1:
        raise MatcherError(f"batch_size must be at least 1, got {batch_size}")


def match(
    labels: Sequence[str],
    ontology: str,
    top_k: int = 3,
    client: Any = None,
    embedder: Any = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    collection: str | None = None,
    exact: bool = True,
) -> list[Answer]:
    """Rank ontology terms for each label; one `Answer` (a list of `Match`) per input label, in order.

    `ontology` is a name or alias (cl/cell_type, uberon/tissue, mondo/disease). Duplicate labels
    are matched once. Empty labels get an empty list. `client=None` connects with
    `ontosearch.connect()`; `embedder=None` uses the embedder the collection was built with.
    Callers matching many batches against one collection should keep a `Matcher` instead.
    """
    _check_arguments(labels, top_k, batch_size)
    if client is None:
        from ontosearch.connect import connect

        client = connect()
    return Matcher(client, ontology, collection, embedder, exact).match(labels, top_k, batch_size)


def _single_term_hit(keys: list[str], hits: dict[str, list[Hit]]) -> Hit | None:
    """An exact-hit record (its label record if hit) when all of a label's hits are one term, else None."""
    found = [hit for key in keys for hit in hits.get(key, ())]
    if not found or len({meta["term_id"] for meta, _ in found}) != 1:
        return None
    labels = [hit for hit in found if hit[0].get("kind") == "label"]
    return (labels or found)[0]


def _hits(coll: Any, fields: str | tuple[str, ...], keys: set[str]) -> dict[str, list[Hit]]:
    """Records whose metadata `fields` equal one of `keys`, grouped by the key they matched."""
    if not keys:
        return {}
    fields = (fields,) if isinstance(fields, str) else fields
    ordered = sorted(keys)
    value: Any = ordered[0] if len(ordered) == 1 else {"$in": ordered}
    clauses = [{field: value} for field in fields]
    where = clauses[0] if len(clauses) == 1 else {"$or": clauses}
    got = coll.get(where=where, include=["metadatas", "embeddings"])
    hits: dict[str, list[Hit]] = {}
    vectors = got["embeddings"] if got["embeddings"] is not None else []
    for meta, vector in zip(got["metadatas"] or [], vectors, strict=True):
        record_vector = np.asarray(vector, dtype=np.float32)
        for key in {meta.get(field) for field in fields} & keys:
            hits.setdefault(key, []).append((meta, record_vector))
    return hits


def _term_of(record_id: str) -> str:
    """`CL:0000815`, `CL:0000815#s2` (synonym) and `CL:0000815#a0` (alias) all belong to CL:0000815."""
    return record_id.split("#", 1)[0]


def _nearest_records(ids: list[str], distances: list[float], keep: int) -> list[tuple[str, float]]:
    """The best record of each of the `keep` nearest terms, as (record id, distance)."""
    best: dict[str, tuple[str, float]] = {}
    for record_id, distance in zip(ids, distances, strict=True):
        term_id = _term_of(record_id)
        if term_id not in best or distance < best[term_id][1]:
            best[term_id] = (record_id, float(distance))
    return sorted(best.values(), key=lambda item: item[1])[:keep]


def fuse(
    keys: list[str],
    hits: dict[str, list[Hit]],
    abbr_hits: list[Hit],
    vector: np.ndarray,
    dense: list[Candidate],
    lexical: Sequence[Candidate] = (),
    fits: dict[str, Fit] | None = None,
) -> list[tuple[str, str, float, str, str]]:
    """The one ranking of a label's candidates from every channel: (term_id, term_label, score,
    matched_text, match_type), each term once, best first.

    Exact hits (on the label's keys in order; labels before aliases before synonyms, general
    before taxon-specific terms) come first, then abbreviation hits, then the dense channel's
    candidates (`dense`, in its order) merged with the lexical channel's (`lexical`) by `_fused`.
    """
    ranked: list[tuple[str, str, float, str, str]] = []
    seen: set[str] = set()

    def take(meta: dict[str, Any], score: float, match_type: str) -> None:
        if meta["term_id"] not in seen:
            seen.add(meta["term_id"])
            ranked.append((meta["term_id"], meta["label"], score, meta["text"], match_type))

    exact = []
    for priority, key in enumerate(keys):
        for meta, record_vector in hits.get(key, ()):
            similarity = float(np.dot(vector, record_vector))
            kind = _EXACT_KIND_ORDER.get(meta["kind"], len(_EXACT_KIND_ORDER))
            # Two terms with the same synonym text tie on similarity (same text, same vector):
            # the one with subtypes is likelier meant, as for abbreviations, not the lower id.
            generality = min(int(meta.get("descendants", 0)), ABBREVIATION_GENERALITY_CAP)
            exact.append(((priority, bool(meta.get("specific")), kind, -similarity, -generality), meta))
    for _, meta in sorted(exact, key=lambda item: item[0]):
        take(meta, EXACT_SCORE, meta["kind"] if meta["kind"] in _EXACT_KIND_ORDER else "synonym")

    by_term: dict[str, list[Hit]] = {}
    for meta, record_vector in abbr_hits:
        by_term.setdefault(meta["term_id"], []).append((meta, record_vector))
    abbreviated = []
    for records in by_term.values():
        similarities = [float(np.dot(vector, record_vector)) for _, record_vector in records]
        best = int(np.argmax(similarities))
        meta = records[best][0]
        via_label = any(record["kind"] == "label" for record, _ in records)
        # Initialisms are ambiguous: an abbreviation of a term's own label, and of a broad,
        # well-populated term, is the likelier reading ("RGC": retinal ganglion cell).
        generality = min(int(meta.get("descendants", 0)), ABBREVIATION_GENERALITY_CAP)
        rank_key = (
            bool(meta.get("specific")), not via_label, -generality, -len(records), -similarities[best]
        )
        abbreviated.append((rank_key, meta))
    for _, meta in sorted(abbreviated, key=lambda item: item[0]):
        take(meta, ABBREVIATION_SCORE, "abbreviation")

    for meta, similarity, match_type in _fused(dense, lexical, fits or {}):
        take(meta, similarity, match_type)

    # Scores never increase with rank.
    capped = []
    ceiling = 1.0
    for term_id, label, score, text, match_type in ranked:
        ceiling = min(ceiling, score)
        capped.append((term_id, label, ceiling, text, match_type))
    return capped


Candidate = tuple[dict[str, Any], float]


def _similarity(vector: np.ndarray, record_vector: np.ndarray) -> float:
    return min(1.0, max(0.0, float(np.dot(vector, record_vector))))


def _lexical_bonus(fit: Fit | None) -> float:
    """What word overlap adds to a candidate: only when one of its names holds every word of the
    label, and then in proportion to how much of that name the label explains."""
    return LEXICAL_WEIGHT * fit.precision if fit is not None and fit.recall >= 1.0 else 0.0


def _fused(
    dense: list[Candidate], lexical: Sequence[Candidate], fits: dict[str, Fit]
) -> list[tuple[dict[str, Any], float, str]]:
    """Dense and lexical candidates in one order: (meta, similarity, match_type), best first.

    Each scores its (taxon-adjusted) similarity plus `_lexical_bonus`. A dense candidate scores at
    least what those after it in the dense order score, so a parent the dense channel moved above
    its child keeps that place; a narrower term passes such an ancestor only when the label names
    it exactly (`_below_named_ancestors`). A candidate is `lexical` when word overlap placed it:
    it came from the lexical channel only, or passed a candidate the dense channel had ranked
    before it.
    """
    if not lexical and not any(_lexical_bonus(fit) for fit in fits.values()):
        return [(meta, similarity, "vector") for meta, similarity in dense]  # nothing to fuse
    floor = -1.0
    places = []
    for meta, similarity in reversed(dense):
        floor = max(floor, _adjusted((meta, similarity)))
        places.append(floor)
    places.reverse()
    entries = [
        (place + _lexical_bonus(fits.get(meta["term_id"])), position, meta, similarity)
        for position, ((meta, similarity), place) in enumerate(zip(dense, places, strict=True))
    ]
    entries += [
        (_adjusted((meta, similarity)) + _lexical_bonus(fits.get(meta["term_id"])), len(dense) + offset, meta,
         similarity)
        for offset, (meta, similarity) in enumerate(lexical)
    ]
    entries = _below_named_ancestors(entries, fits)
    entries.sort(key=lambda entry: (-entry[0], entry[1]))
    # The smallest dense position among the entries after each one: smaller than its own means it
    # passed a candidate the dense channel ranked before it.
    after = [len(dense)] * len(entries)
    for index in range(len(entries) - 2, -1, -1):
        after[index] = min(after[index + 1], entries[index + 1][1])
    out = []
    for (_, position, meta, similarity), smallest_after in zip(entries, after, strict=True):
        moved = position >= len(dense) or smallest_after < position
        out.append((meta, similarity, "lexical" if moved else "vector"))
    return out


def _parents(meta: dict[str, Any]) -> tuple[str, ...]:
    return _parse_parents(meta.get("parents") or "[]")


@functools.lru_cache(maxsize=65536)
def _parse_parents(encoded: str) -> tuple[str, ...]:
    """A record's JSON list of parents; the same few thousand lists recur in every batch."""
    return tuple(json.loads(encoded))


def _adjusted(candidate: Candidate) -> float:
    """Similarity with the taxon prior: taxon-specific terms lose near ties to general ones."""
    meta, similarity = candidate
    return similarity - SPECIFIC_PENALTY * bool(meta.get("specific"))


def _vector_candidates(metadatas: list[dict[str, Any]], distances: list[float]) -> list[Candidate]:
    """Each term once at its best record, best adjusted similarity first."""
    best: dict[str, Candidate] = {}
    for meta, distance in zip(metadatas, distances, strict=True):
        similarity = min(1.0, max(0.0, 1.0 - float(distance)))
        if meta["term_id"] not in best or similarity > best[meta["term_id"]][1]:
            best[meta["term_id"]] = (meta, similarity)
    return sorted(best.values(), key=_adjusted, reverse=True)


def _below_named_ancestors(
    entries: list[tuple[float, int, dict[str, Any], float]], fits: dict[str, Fit]
) -> list[tuple[float, int, dict[str, Any], float]]:
    """A narrower term whose name adds words the label does not have ("manic bipolar affective
    disorder" for "bipolar affective disorder", "right atrium auricular region" for "right
    atrial") stays below an ancestor that the dense channel ranked before it or whose name the
    label names exactly: word overlap may pass the general term only when the label names the
    narrower one exactly (every word of one of its names: "fibroblast of lung" for "lung
    fibroblasts")."""
    parents = {meta["term_id"]: set(_parents(meta)) for _, _, meta, _ in entries}
    score_of = {meta["term_id"]: (score, position) for score, position, meta, _ in entries}
    out = []
    for score, position, meta, similarity in entries:
        fit = fits.get(meta["term_id"])
        if fit is not None and fit.recall >= 1.0 and fit.precision < 1.0:
            caps = [score_of[ancestor][0] - (0.0 if score_of[ancestor][1] < position else 1e-9)
                    for ancestor in _ancestors_among(meta["term_id"], parents)
                    if score_of[ancestor][1] < position or _names_exactly(fits.get(ancestor))]
            score = min([score, *caps])
        out.append((score, position, meta, similarity))
    return out


def _names_exactly(fit: Fit | None) -> bool:
    return fit is not None and fit.recall >= 1.0 and fit.precision >= 1.0


def _shared_parent(candidates: list[Candidate]) -> str | None:
    """The parent of the top candidate that several near-tied candidates share, if any.

    A query that fits several sibling subtypes equally well ("pre-B cells": pre-B-I, pre-B-II)
    names their parent.
    """
    if len(candidates) < 2:
        return None
    ceiling = _adjusted(candidates[0])
    near = [c for c in candidates[:SIBLING_WINDOW] if _adjusted(c) >= ceiling - SIBLING_MARGIN]
    if len(near) < 2:
        return None
    counts: dict[str, int] = {}
    for meta, _ in near:
        for parent in _parents(meta):
            counts[parent] = counts.get(parent, 0) + 1
    top_parents = _parents(candidates[0][0])
    shared = [parent for parent in top_parents if counts.get(parent, 0) >= 2]
    return max(shared, key=lambda parent: counts[parent]) if shared else None


def _put_first(
    candidates: list[Candidate], term_id: str, fetched: dict[str, Hit], vector: np.ndarray
) -> list[Candidate]:
    rest = [c for c in candidates if c[0]["term_id"] != term_id]
    present = [c for c in candidates if c[0]["term_id"] == term_id]
    if present:
        return present + rest
    if term_id in fetched:
        meta, record_vector = fetched[term_id]
        return [(meta, min(1.0, max(0.0, float(np.dot(vector, record_vector)))))] + rest
    return candidates


def _promote_parents(candidates: list[Candidate]) -> list[Candidate]:
    """Move the top candidate's parent (or grandparent, via candidates) first when nearly as similar."""
    if not candidates:
        return candidates
    parents = {meta["term_id"]: set(_parents(meta)) for meta, _ in candidates}
    order = list(candidates)
    moved: set[str] = set()
    top_similarity = order[0][1]
    while True:
        top_meta = order[0][0]
        ancestors = _ancestors_among(top_meta["term_id"], parents)
        better = [
            (index, item) for index, item in enumerate(order[1:], start=1)
            if item[0]["term_id"] in ancestors and item[0]["term_id"] not in moved
            and item[1] >= top_similarity - PARENT_MARGIN
        ]
        if not better:
            return order
        index, item = max(better, key=lambda pair: pair[1][1])
        moved.add(item[0]["term_id"])
        order.insert(0, order.pop(index))


def _ancestors_among(term_id: str, parents: dict[str, set[str]]) -> set[str]:
    found: set[str] = set()
    frontier = set(parents.get(term_id, ()))
    while frontier:
        found |= frontier
        frontier = {grand for parent in frontier for grand in parents.get(parent, ())} - found
    return found & set(parents)

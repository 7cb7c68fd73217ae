"""The lexical channel: BM25 over every term's label, synonyms and aliases, beside the vectors.

Why: an embedding of a compositional label ("outer hair cells", "Lung_Upper_Lobe") can land
nearer a general term or a sibling ("hair follicle cell", "lobe of lung") than the term meant,
whose name holds every content word of the label ("cochlear outer hair cell", "upper lobe of
lung"). Word overlap finds it regardless of word order, the way
atlases and portals compose their labels ("Fibroblast_Lung", "Eye - Retina").

Where from: the collection's own records, read through the chromadb client with
`collection.get` (one of the read calls the read-token proxy allows), so the channel answers the
same on an embedded store and through the proxy the Lambdas use. Chroma's own sparse/BM25 index
is Chroma Cloud only (the local 1.5.9 server refuses it), so the index is built here, once per
collection and process (`index_for`), and kept: a built collection never changes. Reading the
records costs about 65 µs each (CL 5,800 records well under a second, MONDO 81,000 about 5 s), paid
only when a label has no exact hit.

BM25 itself is `bm25s` (pinned in requirements.txt): maintained, numpy only (no scipy, so it fits
the Lambda image), and it scores a query against a precomputed sparse matrix instead of looping
over documents in Python as `rank-bm25` (unreleased since 2022) does. Both sides are tokenised by
`normalize.lexical_tokens`, so plurals, markers and atlas spellings meet the ontology's wording.
"""

from __future__ import annotations

import itertools
import json
import os
import threading
from collections import Counter, OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ontosearch.normalize import lexical_tokens, norm_tokens, normalize

# Records read per `collection.get` call: Chroma's get slows per record on larger pages
# (65 µs per record at 1,000, 80 µs at 5,000, measured on the MONDO collection).
PAGE = 1000
# BM25's term-frequency saturation and length normalisation (Lucene's defaults): a short name
# holding the label's words beats a long one holding them among many others.
K1, B = 1.2, 0.75
# Records scored per query before folding them into terms (terms have several names).
_RECORDS_PER_TERM = 4
# Collections whose index a process keeps (each is a few MB for MONDO's 81,000 names), and whose
# records the cache directory keeps (the newest; each file is under 5 MB).
CACHED_INDEXES = 4
CACHED_FILES = 16
# A word pair counts as the ontology's own equivalence ("renal"/"kidney", "proliferating"/
# "cycling", "tumor"/"neoplasm") when at least this many terms have two names that differ by just
# that pair, and those terms are at least this share of the terms whose names use the rarer word:
# "B cell"/"B lymphocyte" teaches cell/lymphocyte in only a small share of the terms with "cell".
EQUIVALENCE_MIN_TERMS = 3
EQUIVALENCE_MIN_SHARE = 0.1


@dataclass(frozen=True)
class LexicalHit:
    """A term found by word overlap: its best-scoring name's record and BM25 score."""

    term_id: str
    record_id: str
    score: float


@dataclass(frozen=True)
class Fit:
    """How the words of a label and of a term's best-fitting name overlap (equivalent words count):
    `recall` the share of the label's words the name holds, `precision` the share of the name's
    words the label explains. (1.0, 1.0) is the same words in any order."""

    recall: float
    precision: float


class LexicalIndex:
    """BM25 over a collection's names (one document per label, synonym or alias record)."""

    def __init__(
        self, record_ids: Sequence[str], term_ids: Sequence[str], texts: Sequence[str],
        norms: Sequence[str] | None = None, parents: dict[str, Sequence[str]] | None = None,
    ) -> None:
        """`norms`, when given, are the texts' `normalize` keys (the records' `norm` metadata), which
        spares normalising every name again; `parents` the terms' direct parents, whose names
        (and their ancestors') may supply a label's class word (`fit`)."""
        # Sorted by record id, so the index (and its tie-breaking) does not depend on the order
        # in which a server returned the records.
        order = sorted(range(len(record_ids)), key=record_ids.__getitem__)
        self.record_ids = [record_ids[i] for i in order]
        self.term_ids = [term_ids[i] for i in order]
        tokens = [lexical_tokens(texts[i]) if norms is None else norm_tokens(norms[i]) for i in order]
        self._token_sets = [frozenset(words) for words in tokens]
        self._records_of: dict[str, list[int]] = {}
        for index, term_id in enumerate(self.term_ids):
            self._records_of.setdefault(term_id, []).append(index)
        # every word of any of a term's names, filled as asked (`_words_of_term`)
        self._words_of: dict[str, frozenset[str]] = {}
        self._parents = {term_id: tuple(found) for term_id, found in (parents or {}).items()}
        self._class_words: dict[str, frozenset[str]] = {}
        self.equivalents = equivalences(
            [self._token_sets[i] for i in records] for records in self._records_of.values()
        )
        import bm25s  # here, not at import: it loads in 0.2 s, and most runs need no lexical channel

        self._bm25 = bm25s.BM25(k1=K1, b=B)
        if tokens:
            self._bm25.index(tokens, show_progress=False)

    def __len__(self) -> int:
        return len(self.record_ids)

    @classmethod
    def from_collection(cls, collection: Any, cache: Path | None = None) -> LexicalIndex:
        """The index of every record of `collection`, read through `collection.get` page by page.

        With `cache` (a directory), the records' ids, terms and keys are kept there in a file named
        by the collection's id and record count, and read from it next time: reading MONDO's
        81,000 records through Chroma takes seconds, the file a few milliseconds. A file that
        cannot be read or written is ignored (a read-only cache, as on Lambda, just costs time).
        """
        path = cache / f"{collection.id}-{collection.count()}.json" if cache is not None else None
        records = _read_cached(path) if path is not None else None
        if records is None:
            records = _read_records(collection)
            if path is not None:
                _write_cached(path, records)
        record_ids, term_ids, norms, parents = records
        return cls(record_ids, term_ids, norms, norms, parents)

    def _expanded(self, words: list[str]) -> list[str]:
        """The words and, after them, their equivalents, so "kidney pelvis" also asks for "renal"."""
        extra = [other for word in words for other in sorted(self.equivalents.get(word, ()))]
        return words + [word for word in dict.fromkeys(extra) if word not in words]

    def _equivalent(self, word: str) -> frozenset[str]:
        return self.equivalents.get(word, frozenset())

    def fit(self, text: str, term_id: str) -> Fit:
        """The overlap of `text`'s words with the term's best-fitting name (most recall, then precision)."""
        return self.fits(text, [term_id])[term_id]

    def fits(self, text: str, term_ids: Iterable[str]) -> dict[str, Fit]:
        """`fit` for several terms, the text tokenised once."""
        widened, covers = self._widened(text)
        return {term_id: self._fit(widened, covers, term_id) for term_id in term_ids}

    def _widened(self, text: str) -> tuple[list[frozenset[str]], dict[str, int]]:
        """Each word of `text` with its equivalents, and each of those words -> the label words it
        stands for, as bits (what `_fit` compares a name against)."""
        widened = [self._equivalent(word) | {word} for word in frozenset(lexical_tokens(text))]
        covers: dict[str, int] = {}
        for bit, group in enumerate(widened):
            for word in group:
                covers[word] = covers.get(word, 0) | 1 << bit
        return widened, covers

    def holding(self, text: str, term_ids: Iterable[str]) -> dict[str, Fit]:
        """`fits` of just those terms one of whose names holds every word of `text` (recall 1.0,
        a class word standing in for at most one): the only fits the matcher's fusion acts on.
        A term lacking two of the text's words in all its names together is skipped unscored."""
        widened, covers = self._widened(text)
        if not widened:
            return {}
        out = {}
        for term_id in term_ids:
            has = self._words_of_term(term_id)
            lacking = [group for group in widened if group.isdisjoint(has)]
            if len(lacking) > 1 or (lacking and lacking[0].isdisjoint(self._class_words_of(term_id))):
                continue
            fit = self._fit(widened, covers, term_id)
            if fit.recall >= 1.0:
                out[term_id] = fit
        return out

    def _fit(self, widened: list[frozenset[str]], covers: dict[str, int], term_id: str) -> Fit:
        """Each label word with its equivalents (`widened`) against the term's names; equivalence
        is symmetric, so a name's word is explained when `covers` has it. One label word that the
        name lacks still counts as held when it names one of the term's classes: "femoral bone" is
        the femur, whose ancestors are bones."""
        best = Fit(0.0, 0.0)
        if not widened:
            return best
        every = (1 << len(widened)) - 1
        classes = self._class_words_of(term_id)
        for record in self._records_of.get(term_id, ()):
            name = self._token_sets[record]
            if not name:
                continue
            held = explained = 0
            for word in name:
                bits = covers.get(word)
                if bits is not None:
                    held |= bits
                    explained += 1
            missing = every & ~held
            # at most one word from the classes: the class noun ("bone"), never the name itself
            # ("SMA (spinal muscular atrophy)" is not a subtype whose parent is spinal muscular atrophy)
            lacked = missing.bit_count()
            from_classes = lacked == 1 and not widened[missing.bit_length() - 1].isdisjoint(classes)
            covered = len(widened) - lacked + from_classes
            candidate = Fit(covered / len(widened), explained / len(name))
            if (candidate.recall, candidate.precision) > (best.recall, best.precision):
                best = candidate
        return best

    def _words_of_term(self, term_id: str) -> frozenset[str]:
        """Every word of any of the term's names: a label can be held whole only by a term that has
        all its words but one among these (`holding`)."""
        found = self._words_of.get(term_id)
        if found is None:
            records = self._records_of.get(term_id, ())
            found = self._words_of[term_id] = frozenset().union(*(self._token_sets[i] for i in records))
        return found

    def _class_words_of(self, term_id: str) -> frozenset[str]:
        """The words of the names of every ancestor of the term (through `parents`)."""
        found = self._class_words.get(term_id)
        if found is None:
            seen: set[str] = set()
            frontier = list(self._parents.get(term_id, ()))
            while frontier:
                ancestor = frontier.pop()
                if ancestor not in seen:
                    seen.add(ancestor)
                    frontier.extend(self._parents.get(ancestor, ()))
            words: set[str] = set()
            for ancestor in seen:
                for record in self._records_of.get(ancestor, ()):
                    words |= self._token_sets[record]
            found = self._class_words[term_id] = frozenset(words)
        return found

    def search(self, texts: Sequence[str], k: int) -> list[list[LexicalHit]]:
        """Per text, up to `k` terms by their best name's BM25 score, best first (ties by record
        id). The text's words are asked for together with their equivalents (`equivalences`).

        Scores come from bm25s; the best records are chosen here among those that hold a word of
        the text (for MONDO's realworld5 and variants labels a median of 302 of its 81,217 names,
        9,494 at the 90th percentile), where bm25s' own top-k partitions every record's score,
        most of them zero. Every record that ties the last one kept stays, so which of equal names
        stand for a term never depends on the selection algorithm: records are in record-id order,
        and the first of a term's best wins.
        """
        out: list[list[LexicalHit]] = [[] for _ in texts]
        if not self.record_ids:
            return out
        n_records = min(len(self.record_ids), k * _RECORDS_PER_TERM)
        for index, text in enumerate(texts):
            token_ids = self._bm25.get_tokens_ids(self._expanded(lexical_tokens(text)))
            if not token_ids:
                continue
            scores = self._bm25.get_scores_from_ids(token_ids)
            docs = np.flatnonzero(scores > 0)
            if len(docs) > n_records:
                cut = np.partition(scores[docs], len(docs) - n_records)[len(docs) - n_records]
                docs = docs[scores[docs] >= cut]
            best: dict[str, LexicalHit] = {}
            for doc, score in zip(docs.tolist(), scores[docs].tolist(), strict=True):
                term_id = self.term_ids[doc]
                held = best.get(term_id)
                if held is None or score > held.score:
                    best[term_id] = LexicalHit(term_id, self.record_ids[doc], score)
            out[index] = sorted(best.values(), key=lambda hit: (-hit.score, hit.record_id))[:k]
        return out


def equivalences(names_per_term: Iterable[Sequence[frozenset[str]]]) -> dict[str, frozenset[str]]:
    """Word equivalences the ontology itself states: two names of one term that differ by exactly
    one word each ("renal pelvis" / "pelvis of kidney", "proliferating T cell" / "cycling T cell").

    Kept when attested by `EQUIVALENCE_MIN_TERMS` terms that are at least `EQUIVALENCE_MIN_SHARE`
    of the terms whose names use the rarer word; only words of letters, three or longer (numbers
    and single letters differ between numbered siblings' names for other reasons).
    """
    pairs: Counter[tuple[str, str]] = Counter()
    terms_with: Counter[str] = Counter()
    for names in names_per_term:
        distinct = list(dict.fromkeys(name for name in names if name))
        terms_with.update(set().union(*distinct) if distinct else ())
        seen: set[tuple[str, str]] = set()
        for first, second in itertools.combinations(distinct, 2):
            only_first, only_second = first - second, second - first
            if len(only_first) == 1 and len(only_second) == 1:
                pair = tuple(sorted((next(iter(only_first)), next(iter(only_second)))))
                if pair not in seen and all(len(word) >= 3 and word.isalpha() for word in pair):
                    seen.add(pair)
                    pairs[pair] += 1
    out: dict[str, set[str]] = {}
    for (first, second), count in pairs.items():
        rarer = min(terms_with[first], terms_with[second])
        if count >= EQUIVALENCE_MIN_TERMS and count >= EQUIVALENCE_MIN_SHARE * rarer:
            out.setdefault(first, set()).add(second)
            out.setdefault(second, set()).add(first)
    return {word: frozenset(others) for word, others in out.items()}


# record ids, their term ids, their normalize keys; each term's direct parents
_Records = tuple[list[str], list[str], list[str], dict[str, list[str]]]


def _read_records(collection: Any) -> _Records:
    record_ids: list[str] = []
    term_ids: list[str] = []
    norms: list[str] = []
    parents: dict[str, list[str]] = {}
    offset = 0
    while True:
        got = collection.get(include=["metadatas"], limit=PAGE, offset=offset)
        for record_id, meta in zip(got["ids"], got["metadatas"] or [], strict=True):
            if meta and meta.get("text") and meta.get("term_id"):
                record_ids.append(record_id)
                term_ids.append(meta["term_id"])
                norm = meta.get("norm")
                norms.append(norm if isinstance(norm, str) else normalize(meta["text"]))
                if meta.get("kind", "label") == "label":
                    parents[meta["term_id"]] = _parent_list(meta.get("parents"))
        if len(got["ids"]) < PAGE:
            return record_ids, term_ids, norms, parents
        offset += PAGE


def _parent_list(encoded: Any) -> list[str]:
    try:
        found = json.loads(encoded) if isinstance(encoded, str) else []
    except ValueError:
        return []
    return [str(parent) for parent in found] if isinstance(found, list) else []


def _read_cached(path: Path) -> _Records | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        columns = (data["record_ids"], data["term_ids"], data["norms"])
        parents = data["parents"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if not all(isinstance(column, list) for column in columns) or len({len(c) for c in columns}) != 1:
        return None
    return (*columns, parents) if isinstance(parents, dict) else None


def _write_cached(path: Path, records: _Records) -> None:
    record_ids, term_ids, norms, parents = records
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{path.stem}.{os.getpid()}.tmp")
        payload = {"record_ids": record_ids, "term_ids": term_ids, "norms": norms, "parents": parents}
        tmp.write_text(json.dumps(payload), encoding="utf-8")
        tmp.replace(path)
        kept = sorted(path.parent.glob("*.json"), key=lambda file: file.stat().st_mtime, reverse=True)
        for stale in kept[CACHED_FILES:]:
            stale.unlink(missing_ok=True)
    except OSError:
        pass


def cache_directory() -> Path:
    """Where `index_for` keeps the records it read (under the ontosearch cache directory)."""
    from ontosearch.embedders import cache_dir

    return cache_dir() / "lexical"


_INDEXES: OrderedDict[str, LexicalIndex] = OrderedDict()
_LOCK = threading.Lock()
# One lock per index being built, so callers arriving during a build wait for it instead of
# building the same index again (the local workflow runs several query Lambdas as threads of one
# process, and each used to build CL's index at the same time: four builds of about 1 s each).
_BUILDING: dict[str, threading.Lock] = {}


def index_for(collection: Any) -> LexicalIndex:
    """The lexical index of `collection`, built on first use and kept per process.

    Keyed by the collection's id: a rebuilt collection is a new collection with a new id, so a
    kept index (or the records kept in `cache_directory()`) never answers for records it was not
    built from. Threads asking for the same index at once share one build; other indexes are
    served meanwhile.
    """
    key = f"{collection.id}:{collection.name}"
    with _LOCK:
        if key in _INDEXES:
            _INDEXES.move_to_end(key)
            return _INDEXES[key]
        building = _BUILDING.setdefault(key, threading.Lock())
    with building:
        with _LOCK:
            if key in _INDEXES:  # built by the thread this one waited for
                _INDEXES.move_to_end(key)
                return _INDEXES[key]
        try:
            built = LexicalIndex.from_collection(collection, cache_directory())
        except BaseException:
            with _LOCK:
                _BUILDING.pop(key, None)
            raise
        with _LOCK:  # kept and no longer building in one step: no caller finds neither
            _INDEXES[key] = built
            _BUILDING.pop(key, None)
            while len(_INDEXES) > CACHED_INDEXES:
                _INDEXES.popitem(last=False)
    return built

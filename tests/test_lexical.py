"""The lexical channel (BM25 over term names, with the ontology's own word equivalences) and its
fusion with the dense channel: on hand-made names for the rules, on real Chroma (embedded, and a
read-token client through the real auth proxy) for the channel as the matcher uses it."""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import chromadb
import numpy as np
import pytest

from ontosearch import lexical
from ontosearch.embedders import ENV_CACHE_DIR
from ontosearch.indexing import collection_name, index_ontology
from ontosearch.lexical import CACHED_FILES, Fit, LexicalIndex, cache_directory, equivalences, index_for
from ontosearch.matcher import LEXICAL_WEIGHT, _fused, match
from ontosearch.normalize import lexical_tokens
from ontosearch.ontologies import Ontology, Term


def index_of(names: dict[str, list[str]], parents: dict[str, list[str]] | None = None) -> LexicalIndex:
    """An index over terms -> names, record ids shaped like the collection's (label, then `#s<n>`)."""
    record_ids, term_ids, texts = [], [], []
    for term_id, term_names in names.items():
        for position, name in enumerate(term_names):
            record_ids.append(term_id if position == 0 else f"{term_id}#s{position - 1}")
            term_ids.append(term_id)
            texts.append(name)
    return LexicalIndex(record_ids, term_ids, texts, parents=parents)


NAMES = {
    "T:1": ["fibroblast"],
    "T:2": ["fibroblast of lung", "lung fibroblast"],
    "T:3": ["lung"],
    "T:4": ["fibroblast of dermis"],
    "T:5": ["tuft cell of pancreatic duct"],
}


def test_a_label_whose_words_are_all_in_a_name_finds_that_term_in_any_word_order() -> None:
    index = index_of(NAMES)
    for label in ("Lung Fibroblasts", "Fibroblast_Lung", "fibroblasts (lung)"):
        [hits] = index.search([label], k=3)
        assert hits[0].term_id == "T:2", label
    assert index.fit("Lung Fibroblasts", "T:2") == Fit(1.0, 1.0)
    assert index.fit("Lung Fibroblasts", "T:1") == Fit(0.5, 1.0)


def test_each_term_comes_back_once_at_its_best_name() -> None:
    [hits] = index_of(NAMES).search(["lung fibroblast"], k=10)
    ids = [hit.term_id for hit in hits]
    assert len(ids) == len(set(ids)) and ids[0] == "T:2"
    assert hits[0].record_id in {"T:2", "T:2#s0"}


def test_records_tying_at_the_cut_all_stay_and_the_first_record_id_stands_for_its_term() -> None:
    # 12 equal names over 12 terms, and k=2 keeps 2 * 4 records: which of the tied names pass the cut
    # must not depend on how the scores were partitioned, so every tie stays and the terms come
    # back by record id; a term with two equal names is represented by its first record id.
    names = {f"T:{n:02d}": ["gland"] for n in range(12, 0, -1)}
    names["T:00"] = ["gland", "gland"]
    index = index_of(names)
    [hits] = index.search(["gland"], k=2)
    assert [hit.term_id for hit in hits] == ["T:00", "T:01"]
    assert hits[0].record_id == "T:00"
    [wide] = index.search(["gland"], k=20)
    assert [hit.term_id for hit in wide] == sorted(names)
    assert len({hit.score for hit in wide}) == 1


def test_a_label_with_no_known_word_finds_nothing() -> None:
    index = index_of(NAMES)
    assert index.search(["zebra", "", "of the"], k=5) == [[], [], []]


def test_equivalences_are_the_word_pairs_the_ontology_names_one_term_by() -> None:
    names = [
        [frozenset(lexical_tokens(name)) for name in term]
        for term in (["renal pelvis", "kidney pelvis"], ["renal cortex", "cortex of kidney"],
                     ["renal capsule", "kidney capsule"], ["proliferating T cell", "cycling T cell"],
                     ["type 1 cell", "type 2 cell"])
    ]
    found = equivalences(names)
    assert found["renal"] == {"kidney"} and found["kidney"] == {"renal"}
    assert "proliferating" not in found  # one term is no evidence
    assert "1" not in found  # numbered siblings differ by their numbers for other reasons


def test_equivalent_words_count_for_search_and_fit() -> None:
    names = {
        "U:1": ["renal pelvis", "kidney pelvis"], "U:2": ["renal cortex", "kidney cortex"],
        "U:3": ["renal capsule", "kidney capsule"], "U:4": ["renal medulla"], "U:5": ["kidney"],
    }
    index = index_of(names)
    [hits] = index.search(["Kidney Medulla"], k=3)
    assert hits[0].term_id == "U:4"
    assert index.fit("Kidney Medulla", "U:4") == Fit(1.0, 1.0)


def test_one_word_of_the_label_may_name_a_class_of_the_term() -> None:
    names = {"B:1": ["bone"], "B:2": ["long bone"], "B:3": ["femur"], "D:1": ["spinal muscular atrophy"],
             "D:2": ["proximal spinal muscular atrophy", "SMA"]}
    index = index_of(names, parents={"B:2": ["B:1"], "B:3": ["B:2"], "D:2": ["D:1"]})
    assert index.fit("Femur bone", "B:3") == Fit(1.0, 1.0)  # the femur is a (long) bone
    assert index.fit("Femur", "B:3") == Fit(1.0, 1.0)
    # but a class cannot stand for the name: spinal muscular atrophy is named, not a subtype of it
    assert index.fit("SMA (spinal muscular atrophy)", "D:2").recall < 1.0
    assert index.fit("SMA (spinal muscular atrophy)", "D:1").recall < 1.0


def test_holding_is_exactly_the_fits_that_hold_every_word_of_the_label() -> None:
    names = {**NAMES, "B:1": ["bone"], "B:2": ["long bone"], "B:3": ["femur"],
             "K:1": ["renal pelvis", "kidney pelvis"], "K:2": ["renal cortex", "kidney cortex"],
             "K:3": ["renal capsule", "kidney capsule"], "K:4": ["renal medulla"]}
    index = index_of(names, parents={"B:2": ["B:1"], "B:3": ["B:2"]})
    for label in ("Lung Fibroblasts", "fibroblast", "Femur bone", "femoral bone", "Kidney Medulla",
                  "tuft cell", "lung", "zebra", "", "pancreatic duct tuft cells of lung"):
        fits = index.fits(label, names)
        assert index.holding(label, names) == {
            term_id: fit for term_id, fit in fits.items() if fit.recall >= 1.0}, label
    assert set(index.holding("Femur bone", names)) == {"B:3"}  # a class word stands in for one word


def meta(term_id: str, specific: bool = False) -> dict[str, Any]:
    return {"term_id": term_id, "label": term_id, "text": term_id, "specific": specific}


def test_a_name_holding_every_word_of_the_label_passes_a_nearer_term_by_at_most_the_weight() -> None:
    general, composed = meta("fibroblast"), meta("fibroblast of lung")
    fits = {"fibroblast": Fit(0.5, 1.0), "fibroblast of lung": Fit(1.0, 1.0)}
    near = _fused([(general, 0.80), (composed, 0.80 - LEXICAL_WEIGHT / 2)], [], fits)
    assert [(m["term_id"], kind) for m, _, kind in near] == [
        ("fibroblast of lung", "lexical"), ("fibroblast", "vector")]
    far = _fused([(general, 0.80), (composed, 0.80 - LEXICAL_WEIGHT * 2)], [], fits)
    assert [m["term_id"] for m, _, _ in far] == ["fibroblast", "fibroblast of lung"]


def test_the_gain_shrinks_with_words_of_the_name_the_label_does_not_name() -> None:
    ductal, tuft = meta("pancreatic ductal cell"), meta("tuft cell of pancreatic duct")
    # "pancreatic duct cells": the tuft cell's name holds every word but adds one the label lacks
    fits = {"pancreatic ductal cell": Fit(2 / 3, 2 / 3), "tuft cell of pancreatic duct": Fit(1.0, 0.75)}
    gap = LEXICAL_WEIGHT * 0.875
    order = _fused([(ductal, 0.80), (tuft, 0.80 - gap)], [], fits)
    assert [m["term_id"] for m, _, _ in order] == ["pancreatic ductal cell", "tuft cell of pancreatic duct"]


def test_lexical_only_candidates_join_by_similarity_and_say_so() -> None:
    dense = [(meta("A"), 0.9), (meta("B"), 0.7)]
    order = _fused(dense, [(meta("C"), 0.8)], {})
    assert [(m["term_id"], kind) for m, _, kind in order] == [
        ("A", "vector"), ("C", "lexical"), ("B", "vector")]


def test_a_narrower_term_adding_words_stays_below_its_ancestor_unless_the_label_names_it_exactly() -> None:
    general = {**meta("bipolar disorder"), "parents": "[]"}
    narrower = {**meta("manic bipolar affective disorder"), "parents": '["bipolar disorder"]'}
    # "bipolar affective disorder": the narrower name holds every word but adds "manic"
    fits = {"bipolar disorder": Fit(2 / 3, 1.0), "manic bipolar affective disorder": Fit(1.0, 0.75)}
    order = _fused([(general, 0.90), (narrower, 0.93)], [], fits)
    assert [m["term_id"] for m, _, _ in order] == ["bipolar disorder", "manic bipolar affective disorder"]
    # "lung fibroblasts": the narrower term's name is the label's words exactly
    fibroblast = {**meta("fibroblast"), "parents": "[]"}
    of_lung = {**meta("fibroblast of lung"), "parents": '["fibroblast"]'}
    fits = {"fibroblast": Fit(0.5, 1.0), "fibroblast of lung": Fit(1.0, 1.0)}
    order = _fused([(fibroblast, 0.80), (of_lung, 0.82)], [], fits)
    assert [(m["term_id"], kind) for m, _, kind in order] == [
        ("fibroblast of lung", "lexical"), ("fibroblast", "vector")]


def test_a_narrower_term_stays_below_an_ancestor_the_label_names_exactly() -> None:
    region = {**meta("right atrium auricular region"), "parents": '["right atrium"]'}
    atrium = {**meta("right atrium"), "parents": "[]"}
    # "right atrial": the region is nearer and holds both words, but adds two the label lacks
    fits = {"right atrium auricular region": Fit(1.0, 0.5), "right atrium": Fit(1.0, 1.0)}
    order = _fused([(region, 0.82)], [(atrium, 0.66)], fits)
    assert [(m["term_id"], kind) for m, _, kind in order] == [
        ("right atrium", "lexical"), ("right atrium auricular region", "vector")]


def test_a_parent_the_dense_channel_moved_first_keeps_its_place() -> None:
    parent, child = meta("parent"), meta("child")
    order = _fused([(parent, 0.78), (child, 0.80)], [], {})  # the dense order after parent promotion
    assert [m["term_id"] for m, _, _ in order] == ["parent", "child"]


# --- on real Chroma ------------------------------------------------------------------------------


@pytest.fixture(autouse=True)
def own_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Kept records go to this test's directory, not the user's cache."""
    monkeypatch.setenv(ENV_CACHE_DIR, str(tmp_path / "cache"))
    return tmp_path / "cache"


SMALL = Ontology("uberon", "v1", [
    Term("UBERON:0000001", "kidney"),
    Term("UBERON:0000002", "renal pelvis", ("pelvis of kidney",)),
    Term("UBERON:0000003", "renal cortex", ("kidney cortex",)),
    Term("UBERON:0000004", "renal capsule", ("kidney capsule",)),
    Term("UBERON:0000005", "renal medulla", ("medulla of kidney",)),
    Term("UBERON:0000006", "heart"),
    Term("UBERON:0000007", "apex of heart", ("cardiac apex",)),
    Term("UBERON:0000008", "lung"),
    Term("UBERON:0000009", "pelvis"),
])


class FixedEmbedder:
    """Vectors that make the dense channel prefer the organ: every text about the kidney embeds
    close to "kidney", so only word overlap can tell its parts apart."""

    name = "fixed-test-embedder"
    dimensions = 4

    def spec(self) -> dict[str, Any]:
        return {"name": self.name, "dimensions": self.dimensions, "pooling": "mean", "normalize": True}

    def embed(self, texts: list[str], progress: bool = False) -> np.ndarray:
        out = []
        for text in texts:
            words = set(lexical_tokens(text))
            vector = np.array([
                1.0 if words & {"kidney", "renal"} else 0.0, 1.0 if words & {"heart", "cardiac"} else 0.0,
                0.2 * len(words), 0.05,
            ])
            if text.lower() in {"kidney", "heart"}:
                vector[2] = 0.0  # the organ itself: nearest to any label that names it
            out.append(vector / np.linalg.norm(vector))
        return np.asarray(out, dtype=np.float32)


LABELS = ["Kidney Pelvis", "Heart Apex", "Kidney_Medulla", "kidney"]


def test_compositional_labels_find_the_term_holding_their_words(tmp_path: Path) -> None:
    client = chromadb.PersistentClient(path=str(tmp_path))
    index_ontology(client, SMALL, FixedEmbedder(), progress=False)
    found = match(LABELS, "uberon", top_k=3, client=client, embedder=FixedEmbedder())
    assert [answer[0].term_id for answer in found] == [
        "UBERON:0000002", "UBERON:0000007", "UBERON:0000005", "UBERON:0000001"]
    assert found[0][0].match_type in {"lexical", "vector"} and found[3][0].match_type == "label"


def test_only_lexical_terms_holding_every_word_join_and_only_their_vectors_are_fetched(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from ontosearch import matcher as matcher_module

    client = chromadb.PersistentClient(path=str(tmp_path))
    index_ontology(client, SMALL, FixedEmbedder(), progress=False)
    matcher = matcher_module.Matcher(client, "uberon", embedder=FixedEmbedder())
    fetched: list[set[str]] = []
    real = matcher._fetch_records
    monkeypatch.setattr(matcher, "_fetch_records", lambda ids: fetched.append(set(ids)) or real(ids))
    # the dense channel returns two records, so the lexical channel has terms to add
    monkeypatch.setattr(matcher_module, "_MIN_FETCH", 2)
    monkeypatch.setattr(matcher_module, "_OVERFETCH", 1)
    [answer] = matcher.match(["pelvis of the kidney"], top_k=1)
    # "pelvis" (a name of UBERON:0000009) and "kidney" are words of the label, but only the renal pelvis
    # has a name holding both: the lexical channel adds it, not the bare pelvis nor the other kidney parts
    assert answer[0].term_id == "UBERON:0000002"
    assert {term for ids in fetched for term in ids} <= {"UBERON:0000002", "UBERON:0000002#s0"}


def test_the_index_is_built_once_per_collection(tmp_path: Path) -> None:
    client = chromadb.PersistentClient(path=str(tmp_path))
    index_ontology(client, SMALL, FixedEmbedder(), progress=False)
    collection = client.get_collection(collection_name("uberon", "v1"))
    assert index_for(collection) is index_for(client.get_collection(collection.name))
    assert len(index_for(collection)) == collection.count()  # every label, synonym and alias record


def test_threads_asking_for_one_index_at_once_share_one_build(tmp_path: Path, monkeypatch) -> None:
    """The local workflow's query Lambdas are threads of one process: their first chunks arrive
    together, and the index must be read from Chroma and built once, not once per thread."""
    client = chromadb.PersistentClient(path=str(tmp_path / "store"))
    index_ontology(client, SMALL, FixedEmbedder(), progress=False)
    reads = CountingReads(client.get_collection(collection_name("uberon", "v1")))
    monkeypatch.setattr(lexical, "_INDEXES", OrderedDict())
    builds: list[str] = []
    real = LexicalIndex.from_collection.__func__
    start = threading.Barrier(4)

    def slow_build(cls: type, collection: Any, cache: Path | None = None) -> LexicalIndex:
        builds.append(threading.current_thread().name)
        time.sleep(0.3)  # a build of a large ontology takes seconds: the others arrive meanwhile
        return real(cls, collection, cache)

    monkeypatch.setattr(LexicalIndex, "from_collection", classmethod(slow_build))

    def ask(_: int) -> LexicalIndex:
        start.wait()
        return index_for(reads)

    with ThreadPoolExecutor(4) as pool:
        indexes = list(pool.map(ask, range(4)))
    assert len(builds) == 1 and reads.gets == 1
    assert all(index is indexes[0] for index in indexes)
    assert not lexical._BUILDING


READ_TOKEN, ADMIN_TOKEN = "lexicalread0123456789", "lexicaladmin0123456789"


class CountingReads:
    """A real collection, counting the `get` calls made on it."""

    def __init__(self, collection: Any) -> None:
        self.collection = collection
        self.gets = 0
        self.id, self.name = collection.id, collection.name

    def count(self) -> int:
        return self.collection.count()

    def get(self, **kwargs: Any) -> Any:
        self.gets += 1
        return self.collection.get(**kwargs)


def test_records_read_once_are_kept_on_disk_by_collection_id(tmp_path: Path) -> None:
    client = chromadb.PersistentClient(path=str(tmp_path / "store"))
    index_ontology(client, SMALL, FixedEmbedder(), progress=False)
    reads = CountingReads(client.get_collection(collection_name("uberon", "v1")))
    first = LexicalIndex.from_collection(reads, cache_directory())
    assert reads.gets == 1
    again = LexicalIndex.from_collection(reads, cache_directory())
    assert reads.gets == 1  # from the kept file
    assert again.record_ids == first.record_ids and again.search(LABELS, 3) == first.search(LABELS, 3)
    [kept] = cache_directory().glob("*.json")
    assert kept.name == f"{reads.id}-{reads.count()}.json"
    kept.write_text("{not json", encoding="utf-8")  # a damaged file is read past and rewritten
    assert LexicalIndex.from_collection(reads, cache_directory()).record_ids == first.record_ids
    assert reads.gets == 2
    assert LexicalIndex.from_collection(reads, cache_directory()).record_ids == first.record_ids
    assert reads.gets == 2


def test_the_cache_directory_keeps_only_the_newest_files(tmp_path: Path) -> None:
    directory = cache_directory()
    directory.mkdir(parents=True)
    for number in range(CACHED_FILES + 5):
        (directory / f"old-{number}.json").write_text("{}", encoding="utf-8")
    client = chromadb.PersistentClient(path=str(tmp_path / "store"))
    index_ontology(client, SMALL, FixedEmbedder(), progress=False)
    LexicalIndex.from_collection(client.get_collection(collection_name("uberon", "v1")), directory)
    assert len(list(directory.glob("*.json"))) == CACHED_FILES


@pytest.mark.slow
def test_through_the_read_token_proxy_the_channel_answers_as_on_the_embedded_store(tmp_path: Path) -> None:
    from ontosearch.serve import LocalTask

    embedded = chromadb.PersistentClient(path=str(tmp_path / "embedded"))
    index_ontology(embedded, SMALL, FixedEmbedder(), progress=False)
    local = match(LABELS, "uberon", top_k=5, client=embedded, embedder=FixedEmbedder())
    served = tmp_path / "served"
    served.mkdir()
    with LocalTask(persist_dir=served, read_token=READ_TOKEN, admin_token=ADMIN_TOKEN) as task:
        index_ontology(task.client(admin=True), SMALL, FixedEmbedder(), progress=False)
        reader = task.client(admin=False)
        remote_index = LexicalIndex.from_collection(reader.get_collection(collection_name("uberon", "v1")))
        remote = match(LABELS, "uberon", top_k=5, client=reader, embedder=FixedEmbedder())
    local_index = LexicalIndex.from_collection(embedded.get_collection(collection_name("uberon", "v1")))
    assert remote_index.record_ids == local_index.record_ids
    assert remote_index.search(LABELS, 5) == local_index.search(LABELS, 5)
    for over_proxy, in_process in zip(remote, local, strict=True):
        assert [(m.term_id, m.match_type) for m in over_proxy] == [
            (m.term_id, m.match_type) for m in in_process]
        assert np.allclose([m.score for m in over_proxy], [m.score for m in in_process], atol=1e-5)

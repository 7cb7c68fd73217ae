"""Indexing and matching against real Chroma (embedded and a `chroma run` server) with MiniLM.

A subset of CL keeps this fast: a few hundred terms around T cells, B cells, retinal and
pancreatic cells (the real labels, synonyms, parents and deprecated-term exclusion of the
packaged CL), indexed once per module.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import chromadb
import numpy as np
import pytest

from ontosearch.chroma_process import ChromaServer
from ontosearch.constants import SAPBERT_MODEL
from ontosearch.embedders import get_embedder
from ontosearch.indexing import SYNONYM_ID_SEPARATOR, collection_name, count_records, index_ontology
from ontosearch.matcher import ABBREVIATION_SCORE, Match, MatcherError, find_collection, match
from ontosearch.ontologies import Ontology, load_ontology

KEYWORDS = ("T cell", "B cell", "bipolar", "retinal", "pancreatic", "oligodendrocyte", "hepatocyte",
            "natural killer", "stem cell")
KEEP = {"CL:0000000", "CL:0000540", "CL:0000815", "CL:0004117", "CL:0000171"}


def cl_subset() -> Ontology:
    full = load_ontology("cl")
    terms = [t for t in full.terms if t.id in KEEP or any(k in t.label for k in KEYWORDS)]
    kept = {t.id for t in terms}
    # parents outside the subset would point nowhere
    terms = [replace(t, parents=tuple(p for p in t.parents if p in kept)) for t in terms]
    return Ontology(name="cl", version=full.version, terms=terms)


class CountingEmbedder:
    """The real embedder, counting the texts it is asked to embed (to observe deduplication)."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.name = inner.name
        self.dimensions = inner.dimensions
        self.calls: list[list[str]] = []

    def spec(self) -> dict[str, Any]:
        return self.inner.spec()

    def embed(self, texts, progress: bool = False) -> np.ndarray:
        self.calls.append(list(texts))
        return self.inner.embed(texts, progress=progress)


class RenamedEmbedder(CountingEmbedder):
    """The same model presented under another name: what a snapshot built elsewhere looks like."""

    def spec(self) -> dict[str, Any]:
        return {**self.inner.spec(), "name": SAPBERT_MODEL, "dimensions": 768}


@pytest.fixture(scope="module")
def embedder() -> Any:
    return get_embedder()


@pytest.fixture(scope="module")
def ontology() -> Ontology:
    return cl_subset()


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory, ontology: Ontology, embedder: Any) -> Any:
    client = chromadb.PersistentClient(path=str(tmp_path_factory.mktemp("chroma")))
    info = index_ontology(client, ontology, embedder, progress=False)
    assert info["records"] == count_records(ontology)
    return client


def test_collection_is_named_by_version_with_cosine_space_and_embedder(
    client: Any, ontology: Ontology, embedder: Any
) -> None:
    name = collection_name("cl", ontology.version)
    assert name == "cl_" + ontology.version.replace("-", "_")
    collection = client.get_collection(name)
    meta = collection.metadata
    assert meta["hnsw:space"] == "cosine"
    assert collection.configuration_json["hnsw"]["space"] == "cosine"
    assert meta["ontology"] == "cl" and meta["version"] == ontology.version
    assert meta["embedder_name"] == embedder.name
    assert meta["embedder_dimensions"] == embedder.dimensions
    assert meta["synonym_vectors"] is True


def test_collection_names_are_valid_chroma_names() -> None:
    assert collection_name("uberon", "v2025-04-10") == "uberon_v2025_04_10"
    assert collection_name("mondo", "releases/2025.04") == "mondo_releases_2025_04"
    assert 3 <= len(collection_name("cl", "1")) <= 512


def test_records_are_term_ids_and_synonym_ids_with_scalar_metadata(client: Any, ontology: Ontology) -> None:
    collection = client.get_collection(collection_name("cl", ontology.version))
    treg = collection.get(ids=["CL:0000815"], include=["metadatas", "embeddings"])
    meta = treg["metadatas"][0]
    assert meta["term_id"] == "CL:0000815" and meta["label"] == "regulatory T cell"
    assert "Treg" in json.loads(meta["synonyms"])
    assert meta["kind"] == "label" and meta["norm"] == "regulatory t cell"
    assert np.isclose(np.linalg.norm(treg["embeddings"][0]), 1.0, atol=1e-3)
    synonyms = collection.get(where={"term_id": "CL:0000815"}, include=["metadatas"])
    synonym_ids = [i for i in synonyms["ids"] if i != "CL:0000815"]
    assert synonym_ids and all(i.startswith("CL:0000815" + SYNONYM_ID_SEPARATOR) for i in synonym_ids)
    # "regulatory T-cell" normalises like the label: no duplicate vector for it
    assert {m["text"] for m in synonyms["metadatas"]} >= {"regulatory T cell", "Treg"}
    assert "regulatory T-cell" not in {m["text"] for m in synonyms["metadatas"]}
    for record in synonyms["metadatas"]:
        assert all(isinstance(value, (str, int, float, bool)) for value in record.values())


def test_deprecated_terms_are_not_indexed(client: Any, ontology: Ontology) -> None:
    from cellxgene_ontology_guide.supported_versions import load_ontology_file

    raw = load_ontology_file(f"CL-ontology-{ontology.version}.json.zst")
    deprecated = [term_id for term_id, entry in raw.items() if entry.get("deprecated")]
    assert len(deprecated) > 100
    collection = client.get_collection(collection_name("cl", ontology.version))
    assert collection.get(ids=deprecated[:200])["ids"] == []


def test_labels_only_index_has_one_record_per_term(tmp_path: Path, ontology: Ontology, embedder: Any) -> None:
    small = Ontology("cl", ontology.version, ontology.terms[:20])
    client = chromadb.PersistentClient(path=str(tmp_path))
    info = index_ontology(client, small, embedder, progress=False, synonyms=False)
    assert info == {"name": collection_name("cl", small.version), "ontology": "cl",
                    "source_version": small.version, "terms": 20, "records": 20}
    # indexing again replaces the collection instead of adding duplicates
    assert index_ontology(client, small, embedder, progress=False, synonyms=False)["records"] == 20


def test_exact_label_and_synonym_hits_come_first_with_score_one(client: Any, embedder: Any) -> None:
    found = match(["Tregs", "CD4+, alpha-beta T cells", "NATURAL KILLER CELLS"], "cl", client=client,
                  embedder=embedder)
    assert [r[0].term_id for r in found] == ["CL:0000815", "CL:0000624", "CL:0000623"]
    assert found[0][0].score == 1.0 and found[0][0].matched_text == "Treg"
    assert found[1][0].matched_text == "CD4-positive, alpha-beta T cell"


def test_a_semicolon_list_of_names_is_looked_up_name_by_name(client: Any, embedder: Any) -> None:
    # registry style "NAME; SYMBOL" (OMIM) or "name; other name" (ClinVar): neither label as a whole
    # is a name of the ontology, each listed name is
    found = match(["hepatocyte; NK cell", "Liver parenchymal cells, human; Tregs"], "cl", client=client,
                  embedder=embedder)
    assert [(r[0].term_id, r[0].score, r[0].match_type) for r in found] == [
        ("CL:0000182", 1.0, "label"), ("CL:0000815", 1.0, "synonym")]
    assert found[0][1].term_id == "CL:0000623"  # the second name's term next


def test_each_term_appears_once_and_scores_fall_with_rank(client: Any, embedder: Any) -> None:
    for results in match(["T lymphocytes", "retinal neurons", "B cell"], "cell_type", top_k=10,
                         client=client, embedder=embedder):
        ids = [m.term_id for m in results]
        assert len(ids) == len(set(ids)) == 10
        assert [m.rank for m in results] == list(range(1, 11))
        scores = [m.score for m in results]
        assert all(0.0 <= s <= 1.0 for s in scores)
        assert scores == sorted(scores, reverse=True)


def test_abbreviations_match_initialisms_of_labels(client: Any, embedder: Any) -> None:
    [opc] = match(["OPCs"], "cl", client=client, embedder=embedder)
    assert opc[0].term_id == "CL:0002453"  # oligodendrocyte precursor cell
    assert opc[0].score == ABBREVIATION_SCORE


def test_a_query_naming_siblings_gets_their_parent(client: Any, embedder: Any) -> None:
    [bipolar] = match(["bipolar cells"], "cl", client=client, embedder=embedder)
    assert bipolar[0].term_id == "CL:0000748"  # retinal bipolar neuron, not ON- or OFF-bipolar cell


def test_taxon_specific_terms_lose_near_ties_to_general_ones() -> None:
    from ontosearch.matcher import SPECIFIC_PENALTY, _vector_candidates

    mouse = {"term_id": "CL:4300366", "specific": True}
    general = {"term_id": "CL:0002453", "specific": False}
    near_tie = _vector_candidates([mouse, general], [0.10, 0.10 + SPECIFIC_PENALTY / 2])
    assert [meta["term_id"] for meta, _ in near_tie] == ["CL:0002453", "CL:4300366"]
    clear_win = _vector_candidates([mouse, general], [0.10, 0.10 + SPECIFIC_PENALTY * 2])
    assert [meta["term_id"] for meta, _ in clear_win] == ["CL:4300366", "CL:0002453"]


def test_duplicates_are_embedded_once_and_answered_in_input_order(client: Any, embedder: Any) -> None:
    counting = CountingEmbedder(embedder)
    labels = ["liver parenchyma cell", "lymphocytes making antibodies", "liver parenchyma cell", "",
              "lymphocytes making antibodies", "   "]
    found = match(labels, "cl", top_k=2, client=client, embedder=counting)
    assert sorted(text for call in counting.calls for text in call) == [
        "liver parenchyma cell", "lymphocytes making antibodies"]
    assert found[0] == found[2] and found[1] == found[4]
    assert found[3] == [] and found[5] == []
    assert all(isinstance(m, Match) for m in found[0]) and len(found[0]) == 2


def test_labels_with_one_exact_term_are_not_embedded(client: Any, embedder: Any) -> None:
    counting = CountingEmbedder(embedder)
    hepatocytes, b_cells = match(["hepatocytes", "B cells"], "cl", top_k=3, client=client, embedder=counting)
    assert counting.calls == []
    assert b_cells[0].term_id == "CL:0000236" and b_cells[0].score == 1.0
    assert hepatocytes[0].term_id == "CL:0000182" and hepatocytes[0].score == 1.0
    # the neighbours after the exact hit come from the hit's own vector: other, less similar terms
    assert len(b_cells) == 3 and len({m.term_id for m in b_cells}) == 3
    assert all(m.score < 1.0 for m in b_cells[1:])


def test_a_synonym_hit_is_followed_by_the_neighbours_of_its_terms_label(client: Any, embedder: Any) -> None:
    counting = CountingEmbedder(embedder)
    # "OLs" embeds far from oligodendrocytes; the term's label does not
    [by_synonym] = match(["OLs"], "cl", top_k=4, client=client, embedder=counting)
    [by_label] = match(["oligodendrocyte"], "cl", top_k=4, client=client, embedder=counting)
    assert counting.calls == []
    assert by_synonym[0].term_id == by_label[0].term_id == "CL:0000128"
    assert by_synonym[0].matched_text == "OLs" and by_label[0].matched_text == "oligodendrocyte"
    assert [m.term_id for m in by_synonym[1:]] == [m.term_id for m in by_label[1:]]


def test_an_exact_hit_on_several_terms_is_embedded_to_order_them(client: Any, embedder: Any) -> None:
    counting = CountingEmbedder(embedder)
    [found] = match(["BM2 B cells"], "cl", top_k=3, client=client, embedder=counting)
    assert [text for call in counting.calls for text in call] == ["BM2 B cells"]
    assert {m.term_id for m in found[:2]} == {"CL:0000962", "CL:0000964"}
    assert found[0].score == found[1].score == 1.0


def test_a_matcher_answers_repeated_labels_from_its_cache(client: Any, embedder: Any) -> None:
    from ontosearch.matcher import Matcher

    counting = CountingEmbedder(embedder)
    matcher = Matcher(client, "cl", embedder=counting)
    first = matcher.match(["lymphocytes making antibodies", "Tregs"], top_k=3)
    calls = len(counting.calls)
    assert calls == 1
    again = matcher.match(["Tregs", "lymphocytes making antibodies"], top_k=3)
    assert len(counting.calls) == calls
    assert again == [first[1], first[0]]
    # another top_k is another question
    assert len(matcher.match(["lymphocytes making antibodies"], top_k=5)[0]) == 5


def test_small_batches_give_the_same_answers(client: Any, embedder: Any) -> None:
    labels = ["Tregs", "plasma cells", "rod cells", "beta cells", "memory B cells"]
    assert match(labels, "cl", client=client, embedder=embedder, batch_size=2) == match(
        labels, "cl", client=client, embedder=embedder, batch_size=256
    )


def test_rounds_are_embedded_ahead_on_a_worker_thread_with_the_same_answers(
    client: Any, embedder: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Labels over several rounds: each round's texts are embedded in one call on a worker thread
    (beside this thread's queries of the round before), and every answer equals the one-round answer."""
    import threading

    from ontosearch import matcher as matcher_module

    labels = ["Tregs", "lymphocytes making antibodies", "liver parenchyma cell", "plasma cells",
              "rod photoreceptors of the eye", "beta cells", "memory B cells", "cells of the glia"]
    one_round = match(labels, "cl", top_k=3, client=client, embedder=embedder)

    threads: list[str] = []

    class ThreadRecording(CountingEmbedder):
        def embed(self, texts: Any, progress: bool = False) -> Any:
            threads.append(threading.current_thread().name)
            return super().embed(texts, progress)

    recording = ThreadRecording(embedder)
    monkeypatch.setattr(matcher_module, "ROUND_LABELS", 3)
    assert match(labels, "cl", top_k=3, client=client, embedder=recording) == one_round
    assert len(recording.calls) == 3  # rounds of 3, 3 and 2 labels, each needing the embedder
    assert all(name.startswith("ontosearch-match") for name in threads)


# A Lambda execution environment runs at most 1,024 processes and threads ("Execution
# processes/threads", https://docs.aws.amazon.com/lambda/latest/dg/gettingstarted-limits.html), and a
# function gets at most 6 vCPUs, at 10,240 MB (https://aws.amazon.com/blogs/aws/new-for-aws-lambda-
# functions-with-up-to-10-gb-of-memory-and-6-vcpus/). A warm query Lambda serves chunk after chunk in
# one process, so a match call must also leave no thread behind.
LAMBDA_THREADS = 1024
LAMBDA_MAX_VCPUS = 6


def test_a_match_call_runs_at_most_one_thread_per_core_and_one_more_and_leaves_none(
    client: Any, embedder: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On Lambda's largest size (6 cores; the query Lambda is deployed at 3,008 MB, fewer cores, so
    this bounds it from above) a match call over several rounds adds at most the round
    pipeline's worker and one embedding thread per core, counted by the kernel (native onnxruntime
    threads included), and every one of them is gone when the call returns. (The embedded store's
    own Rust workers are left out of the count: a query Lambda reaches Chroma over HTTP.)"""
    import glob

    from ontosearch import embedders
    from ontosearch import matcher as matcher_module
    from ontosearch.constants import DEFAULT_EMBEDDER

    def os_threads() -> set[str]:
        """Kernel thread ids of this process, less the embedded store's Rust workers."""
        tids = set()
        for comm in glob.glob("/proc/self/task/*/comm"):
            try:
                with open(comm) as f:
                    if not f.read().startswith(("sqlx-sqlite", "tokio-rt")):
                        tids.add(comm.split("/")[4])
            except FileNotFoundError:  # a thread that ended while being counted
                pass
        return tids

    monkeypatch.delenv(embedders.ENV_THREADS, raising=False)
    monkeypatch.setattr(embedders, "cpu_count", lambda: LAMBDA_MAX_VCPUS)
    fast = embedders.onnx_embedder(DEFAULT_EMBEDDER, *embedders.model_source(DEFAULT_EMBEDDER))
    assert fast.parallel_batches == LAMBDA_MAX_VCPUS
    # rounds of 24 texts in batches of 2: twice as many batches as threads in every embed call
    monkeypatch.setattr(fast, "batch_size", 2)
    monkeypatch.setattr(matcher_module, "ROUND_LABELS", 24)

    peak, before = 0, set()
    forward = fast._forward

    def counting_forward(*args: Any) -> Any:
        nonlocal peak
        peak = max(peak, len(os_threads() - before))
        return forward(*args)

    monkeypatch.setattr(fast, "_forward", counting_forward)  # counted while batches run: the peak

    def labels_of(kinds: tuple[str, ...]) -> list[str]:
        return [f"{kind} {word} of the {place}" for kind in kinds
                for word in ("T lymphocytes", "B lymphocytes", "bipolar neurons", "stem cells")
                for place in ("retina", "pancreas")]

    # a first call starts what a process starts once (tqdm's monitor thread), as a cold Lambda does
    match(labels_of(("adult",)), "cl", top_k=3, client=client, embedder=fast)
    before = os_threads()  # threads other tests left running are not counted
    peak = 0
    labels = labels_of(("activated", "resting", "cycling", "mature", "immature", "reactive"))
    answers = match(labels, "cl", top_k=3, client=client, embedder=fast)
    started = os_threads() - before
    assert len(answers) == len(labels)
    assert peak <= 1 + LAMBDA_MAX_VCPUS, peak
    assert peak >= 2  # the pipeline and the embedding batches did run on threads of their own
    assert not started  # nothing left running for the next chunk
    assert len(before) + peak < LAMBDA_THREADS


def test_embedder_mismatch_is_refused_naming_both(client: Any, embedder: Any) -> None:
    with pytest.raises(MatcherError, match=r"built with embedder 'all-MiniLM-L6-v2'.*SapBERT"):
        match(["T cells"], "cl", client=client, embedder=RenamedEmbedder(embedder))


def test_default_embedder_is_the_collections(client: Any) -> None:
    assert match(["Tregs"], "cl", client=client)[0][0].term_id == "CL:0000815"


def test_bad_requests_are_refused_clearly(client: Any, embedder: Any) -> None:
    with pytest.raises(MatcherError, match="unknown ontology 'hpo'"):
        match(["x"], "hpo", client=client, embedder=embedder)
    with pytest.raises(MatcherError, match="no uberon collection"):
        match(["liver"], "tissue", client=client, embedder=embedder)
    with pytest.raises(MatcherError, match="not one string"):
        match("T cells", "cl", client=client, embedder=embedder)
    with pytest.raises(MatcherError, match="top_k"):
        match(["T cells"], "cl", top_k=0, client=client, embedder=embedder)
    with pytest.raises(MatcherError, match="labels must be strings"):
        match([None], "cl", client=client, embedder=embedder)  # type: ignore[list-item]


def test_newest_collection_or_a_named_one_is_used(tmp_path: Path, ontology: Ontology, embedder: Any) -> None:
    client = chromadb.PersistentClient(path=str(tmp_path))
    old = Ontology("cl", "v2025-02-13", [t for t in ontology.terms if t.id == "CL:0000084"])
    new = Ontology("cl", "v2026-03-26", [t for t in ontology.terms if t.id == "CL:0000236"])
    index_ontology(client, old, embedder, progress=False)
    index_ontology(client, new, embedder, progress=False)
    assert find_collection(client, "cl").name == "cl_v2026_03_26"
    assert match(["cells"], "cl", client=client, embedder=embedder)[0][0].term_id == "CL:0000236"
    named = match(["cells"], "cl", client=client, embedder=embedder, collection="cl_v2025_02_13")
    assert named[0][0].term_id == "CL:0000084"
    with pytest.raises(MatcherError, match="does not exist"):
        match(["cells"], "cl", client=client, embedder=embedder, collection="cl_v1999")


@pytest.mark.slow
def test_http_client_through_chroma_run_answers_like_the_embedded_store(
    tmp_path: Path, client: Any, ontology: Ontology, embedder: Any
) -> None:
    labels = ["Tregs", "OPCs", "bipolar cells", "CD8+ T cells", "hepatocyte", "pancreatic alpha cells"]
    with ChromaServer(tmp_path / "server") as server:
        remote = chromadb.HttpClient(host=server.host, port=server.port)
        index_ontology(remote, ontology, embedder, progress=False)
        over_http = match(labels, "cl", top_k=5, client=remote, embedder=embedder)
    embedded = match(labels, "cl", top_k=5, client=client, embedder=embedder)
    for http_matches, local_matches in zip(over_http, embedded, strict=True):
        assert [m.term_id for m in http_matches] == [m.term_id for m in local_matches]
        assert np.allclose([m.score for m in http_matches], [m.score for m in local_matches], atol=1e-4)


def test_synonym_and_alias_records_count_as_their_term_among_the_nearest() -> None:
    from ontosearch.matcher import _nearest_records

    ids = ["CL:0000001#a0", "CL:0000001", "CL:0000002#s1", "CL:0000001#s3", "CL:0000003"]
    nearest = _nearest_records(ids, [0.1, 0.2, 0.3, 0.35, 0.4], keep=2)
    assert nearest == [("CL:0000001#a0", 0.1), ("CL:0000002#s1", 0.3)]


def test_among_exact_hits_a_label_beats_an_alias_and_an_alias_beats_a_synonym() -> None:
    from ontosearch.matcher import fuse

    query = np.array([1.0, 0.0], dtype=np.float32)

    def record(term_id: str, kind: str, similarity: float) -> tuple[dict[str, Any], np.ndarray]:
        meta = {"term_id": term_id, "label": term_id.lower(), "kind": kind, "text": "RA", "specific": False}
        return meta, np.array([similarity, np.sqrt(1 - similarity**2)], dtype=np.float32)

    # the synonym's record is the most similar to the query, and still ranks after the alias
    hits = {"ra": [record("MONDO:1", "synonym", 0.9), record("MONDO:2", "alias", 0.5)]}
    assert [term for term, *_ in fuse(["ra"], hits, [], query, [])] == ["MONDO:2", "MONDO:1"]
    hits["ra"].append(record("MONDO:3", "label", 0.1))
    assert [term for term, *_ in fuse(["ra"], hits, [], query, [])] == ["MONDO:3", "MONDO:2", "MONDO:1"]


def test_terms_sharing_a_synonym_text_are_ordered_by_generality_not_by_id() -> None:
    from ontosearch.matcher import fuse

    query = np.array([1.0, 0.0], dtype=np.float32)
    same_vector = np.array([0.6, 0.8], dtype=np.float32)  # one text embeds to one vector

    def record(term_id: str, descendants: int) -> tuple[dict[str, Any], np.ndarray]:
        meta = {"term_id": term_id, "label": term_id, "kind": "synonym", "text": "XY", "specific": False,
                "descendants": descendants}
        return meta, same_vector

    hits = {"xy": [record("MONDO:1", 0), record("MONDO:2", 10)]}
    assert [term for term, *_ in fuse(["xy"], hits, [], query, [])] == ["MONDO:2", "MONDO:1"]

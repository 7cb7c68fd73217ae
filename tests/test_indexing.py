"""index_ontology: embedding in chunks (in-process or through EmbedderPool workers) stores every record
once, with the vector the embedder gives its text, whatever the chunk and insert batch sizes."""

from __future__ import annotations

import numpy as np
import pytest

from ontosearch import indexing
from ontosearch.embed_pool import EmbedderPool
from ontosearch.embedders import get_embedder


@pytest.fixture(scope="module")
def small_cl():
    from ontosearch.ontologies import Ontology, load_ontology

    cl = load_ontology("cl")
    return Ontology(cl.name, cl.version, cl.terms[:60])


def _stored(client, name):
    got = client.get_collection(name).get(include=["embeddings", "metadatas"])
    return {i: (m["text"], np.asarray(e, dtype=np.float32))
            for i, m, e in zip(got["ids"], got["metadatas"], got["embeddings"], strict=True)}


@pytest.mark.parametrize("use_pool", [False, True], ids=["in-process", "pool"])
def test_chunked_indexing_stores_each_records_own_vector(small_cl, tmp_path, monkeypatch, use_pool):
    import chromadb

    records = list(indexing._records(small_cl, True))
    assert len(records) > 60
    # Chunks and insert batches that do not divide the record count, and do not divide each other.
    monkeypatch.setattr(indexing, "EMBED_CHUNK", 23)
    client = chromadb.PersistentClient(path=str(tmp_path / "db"))
    embedder = get_embedder()
    if use_pool:
        with EmbedderPool(workers=2) as pool:
            info = indexing.index_ontology(client, small_cl, pool, progress=False, batch_size=10)
    else:
        info = indexing.index_ontology(client, small_cl, embedder, progress=False, batch_size=10)

    assert info["records"] == len(records)
    stored = _stored(client, info["name"])
    assert sorted(stored) == sorted(record_id for record_id, _, _, _ in records)
    texts = [text for _, text, _, _ in records]
    expected = embedder.embed(texts)
    for (record_id, text, _, _), vector in zip(records, expected, strict=True):
        assert stored[record_id][0] == text
        np.testing.assert_allclose(stored[record_id][1], vector, rtol=0, atol=1e-6)
    metadata = client.get_collection(info["name"]).metadata
    assert metadata["embedder_name"] == embedder.spec()["name"]
    assert metadata["layout"] == indexing.LAYOUT_VERSION


def test_prepared_records_of_another_ontology_are_refused(small_cl, tmp_path):
    import chromadb

    from ontosearch.ontologies import Ontology

    other = Ontology(small_cl.name, small_cl.version, small_cl.terms[:5])
    embedder = get_embedder()
    prepared = indexing.prepare_records(other, embedder)
    client = chromadb.PersistentClient(path=str(tmp_path / "db"))
    with pytest.raises(ValueError, match="prepared records belong to another ontology"):
        indexing.index_ontology(client, small_cl, embedder, progress=False, prepared=prepared)
    with pytest.raises(ValueError, match="prepared records belong to another ontology"):
        indexing.index_ontology(client, other, embedder, progress=False, synonyms=False, prepared=prepared)


def test_pool_prepares_every_chunk_ahead_and_indexing_collects_them(small_cl, tmp_path, monkeypatch):
    import chromadb

    monkeypatch.setattr(indexing, "EMBED_CHUNK", 16)
    client = chromadb.PersistentClient(path=str(tmp_path / "db"))
    with EmbedderPool(workers=2) as pool:
        prepared = indexing.prepare_records(small_cl, pool)
        assert [start for start, _ in prepared.tickets] == list(range(0, len(prepared.records), 16))
        info = indexing.index_ontology(client, small_cl, pool, progress=False, prepared=prepared)
        assert not pool._done  # every submitted chunk was collected
    assert info["records"] == len(prepared.records) == indexing.count_records(small_cl)


def _unwritten_records(path) -> int:
    """Records a process opening `path` must insert into the HNSW index again: those in Chroma's
    log after the vector segment's last write (its max_seq_id row)."""
    import sqlite3

    with sqlite3.connect(f"file:{path}/chroma.sqlite3?mode=ro", uri=True) as db:
        newest = db.execute("SELECT MAX(seq_id) FROM embeddings_queue").fetchone()[0]
        vector = db.execute(
            "SELECT m.seq_id FROM max_seq_id m JOIN segments s ON s.id = m.segment_id "
            "WHERE s.scope = 'VECTOR'").fetchone()
    return newest - (vector[0] if vector else 0)


@pytest.mark.parametrize("remainder", [1, 2, 7])
def test_a_built_collection_leaves_nothing_for_a_reader_to_reinsert(small_cl, tmp_path, remainder):
    """The HNSW index is on disk as built, whatever the size of the last add call (a last call of one
    record, below Chroma's smallest sync threshold, included), so every process reads the same graph."""
    import chromadb

    count = len(list(indexing._records(small_cl, True)))
    batch = next(b for b in range(11, count) if count % b == remainder)
    path = tmp_path / f"db{remainder}"
    client = chromadb.PersistentClient(path=str(path))
    info = indexing.index_ontology(client, small_cl, get_embedder(), progress=False, batch_size=batch)
    assert info["records"] == count == client.get_collection(info["name"]).count()
    assert _unwritten_records(path) == 0

"""The curated alias tables: valid against the packaged ontologies, strict to load, indexed as
exact-hit records, and found first by the matcher in a collection built with real MiniLM."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import chromadb
import pytest

from ontosearch.aliases import (
    ALIAS_DIR,
    COLUMNS,
    AliasTableError,
    abbreviation_meanings,
    alias_table_sha256,
    aliases_by_term,
    expand_abbreviations,
    load_aliases,
    parse_aliases,
)
from ontosearch.indexing import (
    ALIAS_ID_SEPARATOR,
    _records,
    collection_name,
    count_records,
    index_ontology,
)
from ontosearch.matcher import ABBREVIATION_GENERALITY_CAP, EXACT_SCORE, match, rewrites_of
from ontosearch.normalize import abbreviation_key, normalize
from ontosearch.ontologies import Ontology, load_ontology

ONTOLOGIES = ("cl", "uberon", "mondo")
HEADER = "\t".join(COLUMNS)


@pytest.fixture(scope="module")
def packaged() -> dict[str, Ontology]:
    return {name: load_ontology(name) for name in ONTOLOGIES}


# --- the packaged tables -------------------------------------------------------------------------

@pytest.mark.parametrize("name", ONTOLOGIES)
def test_every_table_is_packaged_and_broad(name: str) -> None:
    assert (ALIAS_DIR / f"{name}.tsv").is_file()
    rows = load_aliases(name)
    assert 150 <= len(rows) <= 300, f"{name}: {len(rows)} aliases"
    assert all(row.note for row in rows)


@pytest.mark.parametrize("name", ONTOLOGIES)
def test_every_alias_names_a_live_term_by_its_current_label(name: str, packaged: dict[str, Ontology]) -> None:
    """Deprecated terms are left out by load_ontology, so a missing id is unknown or obsolete."""
    terms = packaged[name].by_id()
    missing = [(row.line, row.alias, row.term_id) for row in load_aliases(name) if row.term_id not in terms]
    assert not missing, f"{name}: ids missing or obsolete in {packaged[name].version}: {missing}"
    relabelled = [
        (row.line, row.term_id, row.term_label, terms[row.term_id].label)
        for row in load_aliases(name) if terms[row.term_id].label != row.term_label
    ]
    assert not relabelled, f"{name}: term_label differs from the ontology's label (wrong id?): {relabelled}"


@pytest.mark.parametrize("name", ONTOLOGIES)
def test_no_alias_conflicts_with_or_repeats_an_ontology_name(
    name: str, packaged: dict[str, Ontology]
) -> None:
    """An alias equal to another term's label would hijack its exact hits; one equal to its own
    term's label/synonym adds nothing. The one exception: an abbreviation may be taken from
    another term's synonym ("RA", listed for refractory anaemia, is rheumatoid arthritis)."""
    owners: dict[str, set[str]] = {}
    label_owners: dict[str, set[str]] = {}
    for term in packaged[name].terms:
        label_owners.setdefault(normalize(term.label), set()).add(term.id)
        for text in (term.label, *term.synonyms):
            owners.setdefault(normalize(text), set()).add(term.id)
    conflicts, redundant = [], []
    for row in load_aliases(name):
        key = normalize(row.alias)
        found = owners.get(key, set())
        others = found - {row.term_id}
        takes_abbreviation = abbreviation_key(row.alias) is not None and not label_owners.get(key)
        if others and not takes_abbreviation:
            conflicts.append((row.line, row.alias, row.term_id, sorted(found)))
        elif row.term_id in label_owners.get(key, set()) or (row.term_id in found and not others):
            # (an abbreviation the term shares with another term's synonym is pinned by its alias)
            redundant.append((row.line, row.alias, row.term_id))
    assert not conflicts, f"{name}: aliases that are another term's name: {conflicts}"
    assert not redundant, f"{name}: aliases the ontology already has (drop them): {redundant}"


def abbreviation_answers(ontology: Ontology) -> dict[str, str]:
    """initialism -> the term the matcher's abbreviation lookup ranks strictly first for it.

    Mirrors `matcher.fuse` for abbreviation hits (general before taxon-specific, via a label,
    generality capped, number of records) over the label and synonym records indexing writes.
    Only strict winners count: a tie is decided by vector similarity, which an alias settles.
    """
    records: dict[str, dict[str, list[str]]] = {}
    specific: dict[str, bool] = {}
    generality: dict[str, int] = {}
    for _, _, meta, _ in _records(ontology, synonyms=True):
        if meta["kind"] == "alias":
            continue
        specific[meta["term_id"]] = bool(meta["specific"])
        generality[meta["term_id"]] = min(int(meta["descendants"]), ABBREVIATION_GENERALITY_CAP)
        for key in {meta["abbr"], meta["abbr_short"]} - {""}:
            records.setdefault(key, {}).setdefault(meta["term_id"], []).append(meta["kind"])
    answers = {}
    for key, terms in records.items():
        def rank(term_id: str, terms: dict[str, list[str]] = terms) -> tuple:
            kinds = terms[term_id]
            return (specific[term_id], "label" not in kinds, -generality[term_id], -len(kinds))

        ordered = sorted(terms, key=rank)
        if len(ordered) == 1 or rank(ordered[0]) < rank(ordered[1]):
            answers[key] = ordered[0]
    return answers


@pytest.mark.parametrize("name", ONTOLOGIES)
def test_no_alias_repeats_what_the_abbreviation_lookup_already_answers(
    name: str, packaged: dict[str, Ontology]
) -> None:
    """An initialism the abbreviation lookup already resolves to the same term ("OPC") would only
    turn its 0.9 into 1.0; the table is for shorthand that lookup gets wrong ("PFC", "LV", "MS")."""
    answers = abbreviation_answers(packaged[name])
    # an abbreviation some term holds as a name is an exact hit: the lookup is never consulted
    named = {normalize(text) for term in packaged[name].terms for text in (term.label, *term.synonyms)}
    repeated = [
        (row.line, row.alias) for row in load_aliases(name)
        if answers.get(abbreviation_key(row.alias) or "") == row.term_id and normalize(row.alias) not in named
    ]
    assert not repeated, f"{name}: the abbreviation lookup already finds these: {repeated}"


def test_table_hash_is_the_hash_of_the_file() -> None:
    import hashlib

    assert alias_table_sha256("cell_type") == hashlib.sha256((ALIAS_DIR / "cl.tsv").read_bytes()).hexdigest()
    assert alias_table_sha256("no-such-ontology") == ""


def test_loading_is_cached_and_a_missing_table_is_empty(tmp_path: Path) -> None:
    assert load_aliases("cl") is load_aliases("cl")
    assert load_aliases("cl", tmp_path) == ()
    assert alias_table_sha256("cl", tmp_path) == ""
    assert aliases_by_term("not-an-ontology") == {}


# --- strict loading --------------------------------------------------------------------------------

def _table(*rows: str) -> str:
    return "\n".join(["# comment", HEADER, *rows]) + "\n"


def test_a_well_formed_table_parses_with_line_numbers() -> None:
    rows = parse_aliases(_table("", "AT2\tCL:0002063\tpulmonary alveolar type 2 cell\tHLCA label"), "cl")
    assert [(r.alias, r.term_id, r.line) for r in rows] == [("AT2", "CL:0002063", 4)]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("alias\tterm_id\tnote\nAT2\tCL:0002063\tx\n", "header must be"),
        ("# only a comment\n", "no header line"),
        (_table("AT2\tCL:0002063\tpulmonary alveolar type 2 cell"), "expected 4 tab-separated fields"),
        (_table("AT2\tCL:0002063\tlabel\tnote\textra"), "expected 4 tab-separated fields"),
        (_table("AT2  CL:0002063  label  note"), "expected 4 tab-separated fields"),
        (_table("\tCL:0002063\tlabel\tnote"), "alias column is empty"),
        (_table("AT2\tCL:0002063\tlabel\t "), "note column is empty"),
        (_table("AT2 \tCL:0002063\tlabel\tnote"), "leading or trailing spaces"),
        (_table("AT2\tUBERON:0002048\tlung\tnote"), "is not a CL id"),
        (_table("AT2\tCL_0002063\tlabel\tnote"), "is not a CL id"),
        (_table("+/-\tCL:0002063\tlabel\tnote"), "no letters or digits"),
        (_table("AT2\tCL:0002063\tl\tn", "AT2s\tCL:0002063\tl\tn"), "repeats line 3"),
        (_table("AT2\tCL:0002063\tl\tn", "at2\tCL:0002062\tl\tn"), "conflicts with"),
    ],
)
def test_malformed_tables_are_refused_with_the_line_and_the_fix(text: str, message: str) -> None:
    with pytest.raises(AliasTableError, match=message) as caught:
        parse_aliases(text, "cl", source="cl.tsv")
    assert "cl.tsv" in str(caught.value)


def test_an_unreadable_table_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "mondo.tsv").write_bytes(b"\xff\xfe\x00bad")
    with pytest.raises(AliasTableError, match="cannot read alias table"):
        load_aliases("mondo", tmp_path)


# --- indexing --------------------------------------------------------------------------------------

def test_alias_records_are_shaped_like_synonym_records_and_counted(packaged: dict[str, Ontology]) -> None:
    cl = packaged["cl"]
    at2 = cl.by_id()["CL:0002063"]  # aliases AT2, AT2 cell, ATII, AEC2
    ontology = Ontology("cl", cl.version, [replace(at2, parents=())])
    records = list(_records(ontology, synonyms=True))
    aliases = [r for r in records if r[2]["kind"] == "alias"]
    synonym = next(r for r in records if r[2]["kind"] == "synonym")
    assert {r[1] for r in aliases} >= {"AT2", "ATII", "AEC2"}
    for record_id, text, meta, document in aliases:
        assert record_id.startswith("CL:0002063" + ALIAS_ID_SEPARATOR)
        assert meta.keys() == synonym[2].keys()
        assert (meta["term_id"], meta["text"], document) == ("CL:0002063", text, text)
        assert meta["norm"] == normalize(text)
        assert meta["abbr"] == meta["abbr_short"] == ""
    assert len({r[0] for r in records}) == len(records)
    assert count_records(ontology) == len(records)
    # labels only: no synonym and no alias records
    assert [r[2]["kind"] for r in _records(ontology, synonyms=False)] == ["label"]


def test_an_alias_the_term_already_has_as_a_synonym_is_indexed_once_as_an_alias(
    packaged: dict[str, Ontology]
) -> None:
    at2 = packaged["cl"].by_id()["CL:0002063"]
    ontology = Ontology("cl", "v1", [replace(at2, parents=(), synonyms=(*at2.synonyms, "atii"))])
    texts = [(r[2]["kind"], r[1]) for r in _records(ontology, synonyms=True)]
    assert ("alias", "ATII") in texts and ("synonym", "atii") not in texts
    norms = [r[2]["norm"] for r in _records(ontology, synonyms=True)]
    assert len(norms) == len(set(norms))


# --- end to end: real Chroma, real MiniLM ----------------------------------------------------------

# label a scientist writes -> term the alias table sends it to
CASES = {
    "cl": {
        "AT2 cells": "CL:0002063", "CD14 Mono": "CL:0000860", "cDC2": "CL:0002399", "L2/3 IT": "CL:4030059",
    },
    "uberon": {"PFC": "UBERON:0000451", "LV": "UBERON:0002084", "GI tract": "UBERON:0001555"},
    "mondo": {"HTN": "MONDO:0005044", "KIRC": "MONDO:0005005", "Parkinson": "MONDO:0005180"},
}


def _subset(full: Ontology, wanted: set[str], size: int) -> Ontology:
    """The wanted terms among `size` others: enough neighbours for vector search to compete."""
    terms = [t for t in full.terms if t.id in wanted] + [t for t in full.terms[:size] if t.id not in wanted]
    kept = {t.id for t in terms}
    return Ontology(full.name, full.version, [replace(t, parents=tuple(p for p in t.parents if p in kept))
                                              for t in terms])


@pytest.fixture(scope="module")
def embedder():
    from ontosearch.embedders import get_embedder

    return get_embedder()


@pytest.mark.slow
@pytest.mark.parametrize("name", ONTOLOGIES)
def test_matcher_finds_the_aliased_term_first(
    name: str, packaged: dict[str, Ontology], embedder, tmp_path: Path
) -> None:
    cases = CASES[name]
    ontology = _subset(packaged[name], set(cases.values()), 200)
    client = chromadb.PersistentClient(path=str(tmp_path / "chroma"))
    info = index_ontology(client, ontology, embedder, progress=False)
    assert info["records"] == count_records(ontology)
    collection = client.get_collection(collection_name(name, ontology.version))
    assert collection.metadata["aliases_sha256"] == alias_table_sha256(name)

    labels = list(cases)
    results = match(labels, name, client=client, embedder=embedder)
    for label, found in zip(labels, results, strict=True):
        assert found, label
        top = found[0]
        assert (label, top.term_id, top.score) == (label, cases[label], EXACT_SCORE)
        assert normalize(top.matched_text) in {normalize(label), normalize(label).removesuffix(" cell")}


@pytest.mark.slow
def test_without_aliases_the_same_labels_have_no_exact_hit(
    packaged: dict[str, Ontology], embedder, tmp_path: Path
) -> None:
    """The alias records are what makes these exact hits: a labels-and-synonyms-only collection
    (`synonyms=False` also drops aliases) gives none of them score 1.0."""
    cases = CASES["cl"]
    ontology = _subset(packaged["cl"], set(cases.values()), 200)
    client = chromadb.PersistentClient(path=str(tmp_path / "chroma"))
    index_ontology(client, ontology, embedder, progress=False, synonyms=False)
    assert client.get_collection(collection_name("cl", ontology.version)).metadata["aliases_sha256"] == ""
    results = match(list(cases), "cl", client=client, embedder=embedder)
    assert all(not found or found[0].score < EXACT_SCORE for found in results)


def test_abbreviations_inside_longer_labels_are_spelt_out_from_the_table() -> None:
    meanings = abbreviation_meanings("uberon")
    by_alias = {row.alias: row.term_label for row in load_aliases("uberon")}
    assert meanings["ln"] == by_alias["LN"] and meanings["lv"] == by_alias["LV"]
    assert expand_abbreviations("Mesenteric LN", "uberon") == f"Mesenteric {by_alias['LN']}"
    assert expand_abbreviations("Mesenteric LNs", "uberon") == f"Mesenteric {by_alias['LN']}"
    assert expand_abbreviations("LN", "uberon") is None  # a lone alias is an exact hit already
    assert expand_abbreviations("left ventricle", "uberon") is None  # plain words stay
    assert expand_abbreviations("Mesenteric LN", None) is None
    # the rewrites try the spelt-out label first, and never repeat the label itself
    assert rewrites_of("Mesenteric LN", "uberon", "uberon")[0] == f"Mesenteric {by_alias['LN']}"
    assert "Mesenteric LN" not in rewrites_of("Mesenteric LN", "uberon", "uberon")
    assert rewrites_of("Mesenteric LN", "uberon", None) == []  # a collection built without aliases


@pytest.mark.slow
def test_an_abbreviation_inside_a_label_gives_the_exact_hit_of_its_spelt_out_form(
    packaged: dict[str, Ontology], embedder, tmp_path: Path
) -> None:
    mesenteric_node, lymph_node = "UBERON:0002509", "UBERON:0000029"
    ontology = _subset(packaged["uberon"], {mesenteric_node, lymph_node}, 200)
    client = chromadb.PersistentClient(path=str(tmp_path / "chroma"))
    index_ontology(client, ontology, embedder, progress=False)
    [found] = match(["Mesenteric LN"], "uberon", client=client, embedder=embedder)
    assert (found[0].term_id, found[0].score) == (mesenteric_node, EXACT_SCORE)
    assert normalize(found[0].matched_text) == "mesenteric lymph node"

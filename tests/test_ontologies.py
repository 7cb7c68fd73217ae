"""Ontology loading: the packaged offline data and OBO release files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import zstandard

from ontosearch.ontologies import (
    Ontology,
    OntologyError,
    available_versions,
    id_prefix,
    is_taxon_specific,
    load_ontology,
    resolve_ontology,
)


def _raw(name: str, version: str) -> dict:
    from cellxgene_ontology_guide._constants import DATA_ROOT

    path = Path(DATA_ROOT) / f"{id_prefix(name)}-ontology-{version}.json.zst"
    with open(path, "rb") as handle, zstandard.ZstdDecompressor().stream_reader(handle) as reader:
        return json.load(reader)


@pytest.mark.parametrize(
    ("alias", "canonical"),
    [("cl", "cl"), ("cell_type", "cl"), ("Cell Type", "cl"), ("tissue", "uberon"), ("UBERON", "uberon"),
     ("disease", "mondo"), ("mondo", "mondo")],
)
def test_aliases_resolve_to_the_three_ontologies(alias: str, canonical: str) -> None:
    assert resolve_ontology(alias) == canonical


def test_unknown_ontology_name_is_refused_with_the_known_names() -> None:
    with pytest.raises(OntologyError, match="unknown ontology 'hpo'.*cl, uberon, mondo"):
        resolve_ontology("hpo")


@pytest.mark.parametrize("name", ["cl", "uberon", "mondo"])
def test_newest_packaged_version_is_the_default(name: str) -> None:
    versions = available_versions(name)
    assert len(versions) >= 2
    assert versions == sorted(versions)  # dated versions: lexical order is release order
    assert load_ontology(name).version == versions[-1]


def test_an_older_version_can_be_selected_with_or_without_the_v() -> None:
    oldest = available_versions("cl")[0]
    assert load_ontology("cl", oldest).version == oldest
    assert load_ontology("cl", oldest.lstrip("v")).version == oldest


def test_unknown_version_lists_the_available_ones() -> None:
    with pytest.raises(OntologyError, match="not shipped.*available: v20"):
        load_ontology("cl", "v1999-01-01")


@pytest.mark.parametrize("name", ["cl", "uberon", "mondo"])
def test_packaged_ontology_has_no_deprecated_or_foreign_terms(name: str) -> None:
    ontology = load_ontology(name)
    raw = _raw(name, ontology.version)
    ids = {term.id for term in ontology.terms}
    deprecated = {term_id for term_id, entry in raw.items() if entry.get("deprecated")}
    assert deprecated, "the package data should contain deprecated terms to leave out"
    assert not ids & deprecated
    assert all(term_id.startswith(id_prefix(name) + ":") for term_id in ids)
    live = {term_id for term_id, entry in raw.items()
            if not entry.get("deprecated") and term_id.startswith(id_prefix(name) + ":")}
    assert ids == live
    assert len(ids) == len(ontology.terms)  # each term once


def test_packaged_terms_carry_labels_synonyms_definitions_and_parents() -> None:
    terms = load_ontology("cl").by_id()
    treg = terms["CL:0000815"]
    assert treg.label == "regulatory T cell"
    assert "Treg" in treg.synonyms
    assert treg.definition
    assert terms["CL:0000749"].parents == ("CL:0000748",)  # ON-bipolar cell is_a retinal bipolar neuron
    assert all(s.casefold() != treg.label.casefold() for s in treg.synonyms)


def test_taxon_specific_terms_are_flagged() -> None:
    cl = load_ontology("cl").by_id()
    assert cl["CL:0004117"].taxon_specific  # "alpha retinal ganglion cell (Mmus)"
    assert not cl["CL:0000740"].taxon_specific
    mondo = load_ontology("mondo").by_id()
    assert mondo["MONDO:1011543"].taxon_specific  # idiopathic pulmonary fibrosis, dog
    assert not mondo["MONDO:0800504"].taxon_specific
    assert not is_taxon_specific("hypoblast (generic)")


OBO = """format-version: 1.2
data-version: cl/releases/2025-04-10/cl.owl
ontology: cl

[Term]
id: CL:0000000
name: cell
def: "A material entity of anatomical origin." []

[Term]
id: CL:0000084
name: T cell
synonym: "T lymphocyte" EXACT []
synonym: "T-cell" EXACT []
synonym: "thymocyte-derived cell" RELATED []
def: "A type of lymphocyte." []
is_a: CL:0000000 ! cell

[Term]
id: CL:0000815
name: regulatory T cell
synonym: "Treg" EXACT []
is_a: CL:0000084 ! T cell

[Term]
id: CL:0000001
name: old cell type
is_obsolete: true

[Term]
id: GO:0005623
name: cell part from another ontology
"""


def test_obo_file_loads_live_own_prefix_terms(tmp_path: Path) -> None:
    path = tmp_path / "cl.obo"
    path.write_text(OBO, encoding="utf-8")
    ontology = load_ontology("cell_type", obo_path=path)
    assert isinstance(ontology, Ontology)
    assert ontology.name == "cl"
    assert ontology.version == "v2025-04-10"
    terms = ontology.by_id()
    assert set(terms) == {"CL:0000000", "CL:0000084", "CL:0000815"}  # obsolete and GO: left out
    t_cell = terms["CL:0000084"]
    assert set(t_cell.synonyms) == {"T lymphocyte", "T-cell", "thymocyte-derived cell"}
    assert t_cell.definition == "A type of lymphocyte."
    assert t_cell.parents == ("CL:0000000",)
    assert terms["CL:0000815"].parents == ("CL:0000084",)


def test_obo_version_argument_overrides_the_header(tmp_path: Path) -> None:
    path = tmp_path / "cl.obo"
    path.write_text(OBO, encoding="utf-8")
    assert load_ontology("cl", "v2099-01-01", obo_path=path).version == "v2099-01-01"


def test_obo_problems_are_reported_clearly(tmp_path: Path) -> None:
    with pytest.raises(OntologyError, match="does not exist"):
        load_ontology("cl", obo_path=tmp_path / "missing.obo")
    path = tmp_path / "cl.obo"
    path.write_text(OBO, encoding="utf-8")
    with pytest.raises(OntologyError, match="no live MONDO: terms"):
        load_ontology("mondo", obo_path=path)
    no_version = tmp_path / "noversion.obo"
    no_version.write_text(OBO.replace("data-version: cl/releases/2025-04-10/cl.owl\n", ""), encoding="utf-8")
    with pytest.raises(OntologyError, match="no data-version header"):
        load_ontology("cl", obo_path=no_version)

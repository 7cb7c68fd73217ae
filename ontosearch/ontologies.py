"""CL, Uberon and MONDO as plain term lists, offline or from an OBO release file.

Two sources, one shape (`Ontology` of `Term`s, deprecated terms already left out):

* the compressed JSON that the PyPI package `cellxgene-ontology-guide` ships (several dated
  versions of each ontology; the newest is the default). No network, so every machine that
  installed the requirements builds the same collections.
* an OBO file from the OBO library for production builds that want a release the package does
  not carry yet.

OBO files are read with **pronto**: it is maintained (regular releases, typed API), parses OBO
through the Rust `fastobo` parser (fast, strict about syntax) and also reads OBO Graphs JSON and
OWL/XML, so a release in another serialisation needs no second code path. It exposes what we
need directly — obsolete flags, synonyms with scopes, definitions, the data-version header —
whereas obonet gives untyped networkx dicts we would have to re-parse, and using fastobo alone
would mean walking its raw syntax tree ourselves.

Only terms of the ontology's own prefix are kept (CL: in CL, UBERON: in Uberon, MONDO: in MONDO):
imported terms (GO, PR, CHEBI...) are not what a user annotating cell types, tissues or diseases
is looking for, and they would be duplicated across collections.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from ontosearch.constants import ONTOLOGIES, ONTOLOGY_ALIASES

# ontology name -> (id prefix, file prefix in cellxgene-ontology-guide)
_PREFIXES = {"cl": "CL", "uberon": "UBERON", "mondo": "MONDO"}
_FILE_SUFFIX = ".json.zst"
# "(Mmus)", "(Homo sapiens)", "(sensu Vertebrata)" at the end of a label; not "(generic)".
_TAXON_QUALIFIER = re.compile(r"\((?:sensu [^)]+|[A-Z][a-z]+(?: [a-z]+)?)\)\s*$")
# MONDO's root of diseases of animals other than humans.
NON_HUMAN_ANIMAL_DISEASE = "MONDO:0005583"


def is_taxon_specific(label: str, ancestors: object = ()) -> bool:
    """A term for one taxon (by its label's qualifier, or below MONDO's non-human animal disease)."""
    return bool(_TAXON_QUALIFIER.search(label)) or NON_HUMAN_ANIMAL_DISEASE in ancestors


class OntologyError(ValueError):
    """An ontology name, version or file that cannot be used."""


@dataclass(frozen=True)
class Term:
    id: str
    label: str
    synonyms: tuple[str, ...] = ()
    definition: str | None = None
    # Direct is_a parents within the ontology's own prefix: the matcher prefers a general term
    # over its subtypes when the query names the general one ("bipolar cells").
    parents: tuple[str, ...] = ()
    # A term for one taxon only ("... (Mmus)", a MONDO non-human animal disease): ranked after
    # the general term when both fit equally well.
    taxon_specific: bool = False


@dataclass
class Ontology:
    name: str  # "cl" | "uberon" | "mondo"
    version: str
    terms: list[Term] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.terms)

    def by_id(self) -> dict[str, Term]:
        return {term.id: term for term in self.terms}


def resolve_ontology(name: str) -> str:
    """The canonical ontology name ("cl", "uberon", "mondo") for a name or alias such as `cell_type`."""
    key = str(name).strip().lower().replace("-", "_").replace(" ", "_")
    if key in ONTOLOGY_ALIASES:
        return ONTOLOGY_ALIASES[key]
    known = ", ".join(sorted(ONTOLOGY_ALIASES))
    raise OntologyError(
        f"unknown ontology {name!r}; use one of {', '.join(ONTOLOGIES)} or an alias ({known})"
    )


def id_prefix(name: str) -> str:
    """The CURIE prefix of the ontology's own terms, e.g. "CL" for cl."""
    return _PREFIXES[resolve_ontology(name)]


def _package_data_dir() -> Path:
    from cellxgene_ontology_guide._constants import DATA_ROOT

    return Path(DATA_ROOT)


def _version_sort_key(version: str) -> list[tuple[int, object]]:
    # "v2025-04-10" and "v3.90.0" alike: compare the numeric runs numerically.
    return [(0, int(part)) if part.isdigit() else (1, part) for part in re.split(r"(\d+)", version) if part]


def available_versions(name: str) -> list[str]:
    """Versions of the ontology shipped by cellxgene-ontology-guide, oldest first."""
    prefix = id_prefix(name)
    head = f"{prefix}-ontology-"
    versions = [
        path.name[len(head):-len(_FILE_SUFFIX)]
        for path in _package_data_dir().glob(f"{head}*{_FILE_SUFFIX}")
    ]
    return sorted(versions, key=_version_sort_key)


def load_ontology(name: str, version: str | None = None, obo_path: str | Path | None = None) -> Ontology:
    """Load an ontology's live terms from the offline package data, or from `obo_path` when given.

    `version` picks one of `available_versions(name)` (default: the newest); with an OBO file it
    overrides the file's `data-version` header.
    """
    canonical = resolve_ontology(name)
    if obo_path is not None:
        return _load_obo(canonical, Path(obo_path), version)
    return _load_packaged(canonical, version)


def _load_packaged(name: str, version: str | None) -> Ontology:
    versions = available_versions(name)
    if not versions:
        raise OntologyError(
            f"cellxgene-ontology-guide ships no {name} data; reinstall it from requirements.txt "
            "or pass an OBO file (obo_path=...)"
        )
    if version is None:
        version = versions[-1]
    elif version not in versions:
        wanted = version if version.startswith("v") else f"v{version}"
        if wanted not in versions:
            raise OntologyError(
                f"{name} version {version!r} is not shipped by cellxgene-ontology-guide; "
                f"available: {', '.join(versions)} (or pass an OBO file)"
            )
        version = wanted
    import json

    import zstandard

    path = _package_data_dir() / f"{id_prefix(name)}-ontology-{version}{_FILE_SUFFIX}"
    with open(path, "rb") as handle, zstandard.ZstdDecompressor().stream_reader(handle) as reader:
        raw = json.load(reader)
    own = id_prefix(name) + ":"
    terms = []
    for term_id, entry in raw.items():
        if not term_id.startswith(own) or entry.get("deprecated"):
            continue
        label = (entry.get("label") or "").strip()
        if not label:
            continue
        ancestors = entry.get("ancestors") or {}
        terms.append(
            Term(
                id=term_id,
                label=label,
                synonyms=_clean_synonyms(label, entry.get("synonyms") or ()),
                definition=(entry.get("description") or None),
                parents=tuple(sorted(a for a, hops in ancestors.items() if hops == 1 and a.startswith(own))),
                taxon_specific=is_taxon_specific(label, ancestors),
            )
        )
    terms.sort(key=lambda term: term.id)
    return Ontology(name=name, version=version, terms=terms)


def _clean_synonyms(label: str, synonyms) -> tuple[str, ...]:
    seen = {label.casefold()}
    kept = []
    for synonym in synonyms:
        text = " ".join(str(synonym).split())
        if text and text.casefold() not in seen:
            seen.add(text.casefold())
            kept.append(text)
    return tuple(kept)


_DATE = re.compile(r"(\d{4}-\d{2}-\d{2})")


def _obo_version(data_version: str | None, path: Path) -> str:
    if data_version:
        # "releases/2025-04-10", ".../cl/releases/2025-04-10/cl.owl" or a bare "2025-04-10"
        found = _DATE.search(data_version)
        return f"v{found.group(1)}" if found else data_version.strip().rsplit("/", 1)[-1]
    raise OntologyError(
        f"{path} has no data-version header; pass version=... (e.g. the release date v2025-04-10)"
    )


def _load_obo(name: str, path: Path, version: str | None) -> Ontology:
    if not path.is_file():
        raise OntologyError(f"OBO file {path} does not exist")
    import pronto

    try:
        parsed = pronto.Ontology(str(path))
    except Exception as exc:  # pronto/fastobo raise several types for syntax errors
        raise OntologyError(f"cannot parse {path} as an ontology file: {exc}") from exc
    if version is None:
        version = _obo_version(parsed.metadata.data_version, path)
    own = id_prefix(name) + ":"
    terms = []
    for term in parsed.terms():
        if not term.id.startswith(own) or term.obsolete:
            continue
        label = (term.name or "").strip()
        if not label:
            continue
        synonyms = sorted(synonym.description for synonym in term.synonyms)
        definition = str(term.definition) if term.definition else None
        direct = term.superclasses(distance=1, with_self=False)
        parents = tuple(sorted(parent.id for parent in direct if parent.id.startswith(own)))
        ancestors: object = ()
        if name == "mondo":
            ancestors = {parent.id for parent in term.superclasses(with_self=False)}
        terms.append(
            Term(term.id, label, _clean_synonyms(label, synonyms), definition, parents,
                 is_taxon_specific(label, ancestors))
        )
    if not terms:
        raise OntologyError(f"{path} holds no live {own} terms; is it the {name} ontology?")
    terms.sort(key=lambda term: term.id)
    return Ontology(name=name, version=version, terms=terms)

"""Ontology ids given where a label is expected: `CL:0000236`, `CL_0000236` or the OBO PURL.

Sample sheets and CELLxGENE obs columns often already hold ids, some of them years old. An id is
not text to be matched by similarity (its embedding means nothing), so the matcher answers it by
lookup: a live id is its own term; an obsolete one is upgraded the way the ontology says.

Collections hold only live terms, so an id the collection lacks is looked up in the packaged
release of the ontology (cellxgene-ontology-guide) of the collection's version: its `replaced_by`
term, or, when the ontology gives only `consider` terms, those, in the ontology's order (the
ontology lists the likelier replacement first, e.g. "cell (CL:0000000), native cell ...").

What counts as an id: the PURL form of any prefix (it is unambiguous), and `PREFIX:digits` or
`PREFIX_digits` for the prefixes of `KNOWN_PREFIXES` only: "cluster_12" or "T_1" are labels.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from functools import lru_cache

PURL_BASE = "http://purl.obolibrary.org/obo/"
# Prefixes whose CURIEs are taken as ids (case-insensitive), spelt as their ontologies spell them:
# ours, and the others found in CELLxGENE obs columns and OBO annotation files.
KNOWN_PREFIXES = {
    prefix.lower(): prefix
    for prefix in (
        "CL", "UBERON", "MONDO", "GO", "HP", "EFO", "DOID", "NCIT", "NCBITaxon", "PATO", "HsapDv",
        "MmusDv", "HANCESTRO", "CHEBI", "PR", "UO", "FBbt", "ZFA", "WBbt", "ORDO", "OMIM", "MESH",
    )
}
_PURL = re.compile(r"^(?:https?://purl\.obolibrary\.org/obo/|obo:)([A-Za-z][A-Za-z0-9]*)_(\d+)$")
_CURIE = re.compile(r"^([A-Za-z][A-Za-z0-9]*)[:_](\d+)$")
# replaced_by can point at a term that was itself made obsolete later; follow at most this many hops.
MAX_REPLACEMENT_HOPS = 5


def parse_term_id(text: str) -> str | None:
    """The CURIE (`CL:0000236`) that `text` names, or None when `text` is a label, not an id."""
    text = text.strip()
    found = _PURL.match(text)
    if found:
        prefix = KNOWN_PREFIXES.get(found.group(1).lower(), found.group(1))
        return f"{prefix}:{found.group(2)}"
    found = _CURIE.match(text)
    if found and found.group(1).lower() in KNOWN_PREFIXES:
        return f"{KNOWN_PREFIXES[found.group(1).lower()]}:{found.group(2)}"
    return None


def purl(curie: str) -> str:
    """`CL:0000236` -> http://purl.obolibrary.org/obo/CL_0000236."""
    prefix, _, local = curie.partition(":")
    return f"{PURL_BASE}{prefix}_{local}"


@dataclass(frozen=True)
class Obsolete:
    """What the ontology release says about one of its obsolete ids."""

    term_id: str
    label: str
    replaced_by: str | None = None
    consider: tuple[str, ...] = field(default_factory=tuple)


class ObsoleteLookupError(RuntimeError):
    """The packaged ontology release needed to look up an obsolete id is not available here."""


def obsolete_term(ontology: str, version: str | None, curie: str) -> Obsolete | None:
    """The obsolete entry of `curie` in the packaged release `version` (else the newest), or None."""
    return obsolete_terms(ontology, version).get(curie)


def replacement_chain(ontology: str, version: str | None, curie: str) -> tuple[Obsolete | None, str | None]:
    """(the obsolete entry of `curie`, the id its replaced_by chain ends at, or None)."""
    table = obsolete_terms(ontology, version)
    first = table.get(curie)
    return first, (_follow(table, first.replaced_by) if first else None)


def considered(ontology: str, version: str | None, entry: Obsolete) -> list[str]:
    """The terms `entry` suggests considering, each obsolete one through its replacement, each once."""
    table = obsolete_terms(ontology, version)
    out = [_follow(table, term_id) if term_id in table else term_id for term_id in entry.consider]
    return [term_id for index, term_id in enumerate(out) if term_id and term_id not in out[:index]]


def _follow(table: dict[str, Obsolete], target: str | None) -> str | None:
    for _ in range(MAX_REPLACEMENT_HOPS):
        if target is None or target not in table:
            return target
        target = table[target].replaced_by
    return None


@lru_cache(maxsize=8)
def obsolete_terms(ontology: str, version: str | None) -> dict[str, Obsolete]:
    """Every obsolete id of the ontology's packaged release, read once per (ontology, version)."""
    try:
        from ontosearch.ontologies import _FILE_SUFFIX, _package_data_dir, available_versions, id_prefix

        versions = available_versions(ontology)
        data_dir = _package_data_dir()
        import zstandard
    except ImportError as exc:
        # The batch workflow's Lambda image leaves the package out (lambdas/requirements.txt): its
        # query Lambda answers live ids from the collection and these ids with this error row.
        raise ObsoleteLookupError(
            f"obsolete ids are looked up in the packaged ontology (cellxgene-ontology-guide), which is "
            f"not installed here ({exc}); the batch workflow's Lambdas do not have it: annotate such ids "
            "with `python -m ontosearch annotate` after `bash scripts/setup.sh` (requirements.txt)"
        ) from None
    if not versions:
        raise ObsoleteLookupError(f"cellxgene-ontology-guide ships no {ontology} release to look ids up in")
    chosen = version if version in versions else versions[-1]
    path = data_dir / f"{id_prefix(ontology)}-ontology-{chosen}{_FILE_SUFFIX}"
    with open(path, "rb") as handle, zstandard.ZstdDecompressor().stream_reader(handle) as reader:
        raw = json.load(reader)
    out: dict[str, Obsolete] = {}
    for term_id, entry in raw.items():
        if not entry.get("deprecated"):
            continue
        replaced = entry.get("replaced_by")
        if isinstance(replaced, list):  # one id in every release seen; a list is read as its first
            replaced = replaced[0] if replaced else None
        consider = entry.get("consider") or []
        out[term_id] = Obsolete(
            term_id=term_id,
            label=(entry.get("label") or "").strip(),
            replaced_by=replaced or None,
            consider=tuple(consider) if isinstance(consider, list) else (str(consider),),
        )
    return out

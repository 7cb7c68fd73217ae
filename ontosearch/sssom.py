"""Annotation results as an SSSOM mapping set: free-text labels mapped to ontology terms.

SSSOM (Simple Standard for Sharing Ontological Mappings, https://w3id.org/sssom/) is how ontology
curators exchange mappings; OAK, text2term and the OBO ontologies' own mapping files read it. A
label is a string, not an entity, so this follows the specification's literal profile: the set
declares `subject_type: rdfs literal` and each mapping has a `subject_label` and no `subject_id`.

What each row says:
- `predicate_id` skos:exactMatch (the label names the term), skos:relatedMatch for the terms an
  obsolete id's ontology suggests considering (it names no replacement);
- `mapping_justification` from the semapv vocabulary: LexicalMatching for exact label, synonym,
  alias, initialism and id hits, SemanticSimilarityThresholdMatching for embedding neighbours
  (with `similarity_score`, the cosine similarity, and `similarity_measure`), MappingChaining for an
  obsolete id followed to its replacement;
- `confidence` the measured precision of the row's confidence class (`ontosearch.confidence`):
  the probability, on the held-out sets, that such a row names the intended term;
- `other` keeps what SSSOM has no slot for: `rank`, `match_type` and `confidence_class`;
- labels without a term (no match, below `--min-confidence`, an unknown id, unreadable input) map
  to sssom:NoTermFound with the reason in `comment`, so the set says they were tried.

One set of rows per distinct label (a mapping set is a set: a label repeated in the input is one
subject). An empty label cannot be an SSSOM subject (`subject_label` is required for literals);
such rows are counted (`skipped`) and the caller says so. TSV has no quoting: tabs and line breaks
inside a value become spaces.
"""

from __future__ import annotations

import datetime
import re
import uuid
from collections.abc import Iterable, Sequence
from typing import IO, Any

import yaml

from ontosearch.confidence import precision_of
from ontosearch.label_io import STATUS_CONSIDER, STATUS_ERROR, STATUS_NO_MATCH, result_lines
from ontosearch.ontologies import id_prefix
from ontosearch.term_ids import PURL_BASE

# Used when the caller names none, as SSSOM's own tools (sssom-py) do: the license IRI SSSOM
# defines for "not stated", and a fresh mapping set id under SSSOM's namespace for generated sets.
DEFAULT_LICENSE = "https://w3id.org/sssom/license/unspecified"
GENERATED_SET_BASE = "https://w3id.org/sssom/mappings/"
TOOL_NAME = "ontosearch"
COLUMNS = (
    "subject_label", "predicate_id", "object_id", "object_label", "mapping_justification", "confidence",
    "object_source_version", "similarity_score", "similarity_measure", "other", "comment",
)
EXACT_MATCH = "skos:exactMatch"
RELATED_MATCH = "skos:relatedMatch"
NO_TERM_FOUND = "sssom:NoTermFound"
LEXICAL = "semapv:LexicalMatching"
SEMANTIC = "semapv:SemanticSimilarityThresholdMatching"
CHAINING = "semapv:MappingChaining"
UNSPECIFIED = "semapv:UnspecifiedMatching"
_JUSTIFICATION = {"vector": SEMANTIC, "replaced_id": CHAINING}
# Wikidata's item for cosine similarity, as SSSOM's own examples name the measure.
COSINE_SIMILARITY = "wikidata:Q1784941"
_DATE = re.compile(r"(\d{4}-\d{2}-\d{2})")
_UNSAFE = re.compile(r"[\t\r\n]+")


def release_iri(ontology: str, version: str) -> str:
    """The OBO version IRI of a dated release (`cl` v2026-03-26 -> .../cl/releases/2026-03-26/cl.owl),
    or the version string itself when it is not a date."""
    found = _DATE.search(version or "")
    if not found:
        return version
    return f"{PURL_BASE}{ontology}/releases/{found.group(1)}/{ontology}.owl"


def metadata(
    ontology: str,
    version: str,
    tool_version: str,
    embedder: str = "",
    mapping_set_id: str | None = None,
    license_url: str = DEFAULT_LICENSE,
    title: str | None = None,
    today: datetime.date | None = None,
) -> dict[str, Any]:
    """The mapping set's metadata block (before it is written as commented YAML)."""
    prefix = id_prefix(ontology)
    return {
        "curie_map": {
            prefix: f"{PURL_BASE}{prefix}_",
            "obo": PURL_BASE,
            "wikidata": "https://www.wikidata.org/entity/",
        },
        "mapping_set_id": mapping_set_id or f"{GENERATED_SET_BASE}{uuid.uuid4()}",
        "mapping_set_title": title or f"Free-text labels mapped to {prefix} {version} terms by {TOOL_NAME}",
        # The release is also every row's object_source_version (rows carry it, so it is not set here
        # as well: SSSOM would not propagate a set-level value over the rows' own).
        "mapping_set_description": (
            f"{TOOL_NAME} {tool_version} matched each label against the {prefix} release "
            f"{release_iri(ontology, version)} ({version})"
            + (f", embedding neighbours with {embedder}" if embedder else "") + "."
        ),
        "license": license_url,
        "subject_type": "rdfs literal",
        "object_type": "owl class",
        "object_source": f"obo:{ontology}.owl",
        "mapping_tool": TOOL_NAME,
        "mapping_tool_version": tool_version,
        "mapping_date": (today or datetime.date.today()).isoformat(),
        "comment": (
            "confidence is the measured precision of the row's confidence class on held-out labels "
            "(ontosearch.confidence); other holds rank, match_type and confidence_class; labels without a "
            f"term map to {NO_TERM_FOUND} with the reason in comment."
        ),
    }


def _clean(value: Any) -> str:
    return _UNSAFE.sub(" ", str(value)) if value is not None else ""


class SssomWriter:
    """Writes annotation results as one SSSOM TSV file; same `write` as `label_io.ResultWriter`."""

    def __init__(
        self,
        handle: IO[str],
        ontology: str,
        version: str,
        tool_version: str,
        embedder: str = "",
        min_confidence: str | None = None,
        mapping_set_id: str | None = None,
        license_url: str = DEFAULT_LICENSE,
    ) -> None:
        self.handle = handle
        self.ontology = ontology
        self.min_confidence = min_confidence
        self.meta = metadata(ontology, version, tool_version, embedder, mapping_set_id, license_url)
        self.source_version = release_iri(ontology, version)
        self.counts = {"rows": 0, "annotated": 0, "errors": 0, "no_match": 0, "skipped": 0}
        self._seen: set[str] = set()
        block = yaml.safe_dump(self.meta, sort_keys=False, allow_unicode=True, width=10_000)
        handle.write("".join(f"#{line}\n" for line in block.splitlines()))
        handle.write("\t".join(COLUMNS) + "\n")

    def write(self, row: int, label: str | None, error: str | None, matches: Iterable[Any] = (),
              extra: Sequence[Any] = ()) -> None:
        """The mappings of one input row (once per distinct label)."""
        kind, lines = result_lines(label, self.ontology, error, matches, self.min_confidence)
        self.counts["rows"] += 1
        self.counts[kind] += 1
        text = _clean(label or "").strip()
        if not text:
            self.counts["skipped"] += 1
            return
        if text in self._seen:
            return
        self._seen.add(text)
        self.handle.write("".join("\t".join(self._cells(text, line)) + "\n" for line in lines))

    def _cells(self, text: str, line: list[Any]) -> list[str]:
        _, _, rank, term_id, term_label, score, match_type, confidence, status, note = line
        if status in (STATUS_ERROR, STATUS_NO_MATCH):
            values = {"predicate_id": EXACT_MATCH, "object_id": NO_TERM_FOUND,
                      "mapping_justification": UNSPECIFIED, "comment": note}
        else:
            similarity = match_type == "vector"
            values = {
                "predicate_id": RELATED_MATCH if status == STATUS_CONSIDER else EXACT_MATCH,
                "object_id": term_id,
                "object_label": term_label,
                "mapping_justification": _JUSTIFICATION.get(match_type, LEXICAL),
                "confidence": f"{precision_of(confidence, int(rank)):.3f}",
                "similarity_score": score if similarity else "",
                "similarity_measure": COSINE_SIMILARITY if similarity else "",
                "other": f"rank={rank}|match_type={match_type}|confidence_class={confidence}",
                "comment": note,
            }
        values["subject_label"] = text
        values["object_source_version"] = self.source_version
        return [_clean(values.get(column, "")) for column in COLUMNS]

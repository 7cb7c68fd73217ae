"""Curated lab shorthand for ontology terms, indexed as extra exact-match records.

Scientists label cells, tissues and diseases with shorthand the ontologies' own synonyms do not
carry ("AT2", "CD14 Mono", "PFC", "T2D" is there but "HTN" is not). Such a label has no exact hit
and the embedders place it poorly, so it falls to a weak vector match. The tables under
`ontosearch/data/aliases/<ontology>.tsv` name the term each shorthand means; indexing adds every
alias as a record of its term (`kind` "alias"), so it becomes an exact hit like a synonym. An
alias never equals another term's label; it may equal another term's synonym when it is an
abbreviation the ontology lists for a rare term ("RA" for refractory anaemia), and the matcher then
ranks the alias first.

A table is tab-separated with the header `alias  term_id  term_label  note`; lines starting with
"#" and blank lines are ignored. `term_label` is the term's label in the packaged ontology: it
lets a reviewer read the table without looking ids up, and the tests check it, which catches a
mistyped id that happens to be valid. `note` says where the shorthand comes from.

Loading is strict (a malformed row is named with its line number) and cached per ontology; the
table's sha256 is recorded in each collection's metadata so a snapshot says which table it used.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from ontosearch.normalize import abbreviation_key, normalize
from ontosearch.ontologies import OntologyError, id_prefix, resolve_ontology

ALIAS_DIR = Path(__file__).with_name("data") / "aliases"
COLUMNS = ("alias", "term_id", "term_label", "note")
_TERM_ID = re.compile(r"^([A-Za-z]+):[0-9]+$")


class AliasTableError(ValueError):
    """An alias table that cannot be used as it stands (bad header, malformed row, duplicate)."""


@dataclass(frozen=True)
class Alias:
    alias: str
    term_id: str
    term_label: str
    note: str
    line: int  # 1-based line in the table, for error messages and reviews


def alias_path(ontology: str, directory: Path | None = None) -> Path:
    """Where the alias table of `ontology` (a name or alias such as "cell_type") lives."""
    return (directory or ALIAS_DIR) / f"{resolve_ontology(ontology)}.tsv"


def parse_aliases(text: str, ontology: str, source: str = "alias table") -> tuple[Alias, ...]:
    """The rows of an alias table, checked for shape; raises AliasTableError naming the bad line."""
    prefix = id_prefix(ontology)
    rows: list[Alias] = []
    header_seen = False
    by_norm: dict[str, Alias] = {}
    for number, raw in enumerate(text.splitlines(), start=1):
        if not raw.strip() or raw.startswith("#"):
            continue
        fields = raw.split("\t")
        where = f"{source} line {number}"
        if not header_seen:
            if tuple(field.strip() for field in fields) != COLUMNS:
                raise AliasTableError(
                    f"{where}: the header must be the tab-separated columns {', '.join(COLUMNS)}; "
                    f"got {raw!r}"
                )
            header_seen = True
            continue
        if len(fields) != len(COLUMNS):
            raise AliasTableError(
                f"{where}: expected {len(COLUMNS)} tab-separated fields ({', '.join(COLUMNS)}), "
                f"got {len(fields)}: {raw!r}; separate columns with one tab and keep tabs out of values"
            )
        alias, term_id, term_label, note = fields
        for name, value in zip(COLUMNS, fields, strict=True):
            if not value.strip():
                raise AliasTableError(f"{where}: the {name} column is empty; every column needs a value")
            if value != value.strip():
                raise AliasTableError(f"{where}: the {name} value {value!r} has leading or trailing spaces")
        found = _TERM_ID.match(term_id)
        if not found or found.group(1) != prefix:
            raise AliasTableError(
                f"{where}: term id {term_id!r} is not a {prefix} id like {prefix}:0000001"
            )
        norm = normalize(alias)
        if not norm:
            raise AliasTableError(f"{where}: alias {alias!r} has no letters or digits to match on")
        entry = Alias(alias, term_id, term_label, note, number)
        earlier = by_norm.get(norm)
        if earlier is not None:
            what = "repeats" if earlier.term_id == term_id else f"conflicts with (it says {earlier.term_id})"
            raise AliasTableError(
                f"{where}: alias {alias!r} normalises to {norm!r}, which {what} line {earlier.line} "
                f"({earlier.alias!r}); keep one row per normalised alias"
            )
        by_norm[norm] = entry
        rows.append(entry)
    if not header_seen:
        raise AliasTableError(f"{source} has no header line ({', '.join(COLUMNS)})")
    return tuple(rows)


@lru_cache(maxsize=16)
def load_aliases(ontology: str, directory: Path | None = None) -> tuple[Alias, ...]:
    """The packaged alias table of `ontology`; empty when the ontology has none."""
    path = alias_path(ontology, directory)
    if not path.is_file():
        return ()
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise AliasTableError(f"cannot read alias table {path}: {exc}") from None
    return parse_aliases(text, ontology, source=str(path))


@lru_cache(maxsize=16)
def alias_table_sha256(ontology: str, directory: Path | None = None) -> str:
    """sha256 of the table's bytes ("" when the ontology has none): which table a build used."""
    try:
        path = alias_path(ontology, directory)
    except OntologyError:
        return ""
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else ""


def aliases_by_term(ontology: str, directory: Path | None = None) -> dict[str, tuple[str, ...]]:
    """term id -> its alias texts, in table order. Empty for an ontology name we do not know."""
    try:
        rows = load_aliases(ontology, directory)
    except OntologyError:
        return {}
    out: dict[str, list[str]] = {}
    for row in rows:
        out.setdefault(row.term_id, []).append(row.alias)
    return {term_id: tuple(texts) for term_id, texts in out.items()}


@lru_cache(maxsize=16)
def abbreviation_meanings(ontology: str) -> dict[str, str]:
    """Single-token aliases written as abbreviations -> the label of their term ("ln" -> "lymph node").

    For abbreviations inside longer labels ("Mesenteric LN", "LV myocardium"): a whole-label
    alias cannot match them, and the embedders read "LN" as noise.
    """
    try:
        rows = load_aliases(ontology)
    except OntologyError:
        return {}
    out: dict[str, str] = {}
    for row in rows:
        key = abbreviation_key(row.alias) if len(row.alias.split()) == 1 else None
        if key:
            out.setdefault(key, row.term_label)
    return out


def expand_abbreviations(text: str, ontology: str | None) -> str | None:
    """`text` with each abbreviation a single-token alias explains spelt out, or None when none does.

    Only labels of two words or more: a lone abbreviation is an alias hit already.
    """
    words = text.split()
    if ontology is None or len(words) < 2:
        return None
    meanings = abbreviation_meanings(ontology)
    if not meanings:
        return None
    out = []
    for word in words:
        key = abbreviation_key(word)
        out.append(meanings.get(key, word) if key else word)
    return " ".join(out) if out != words else None

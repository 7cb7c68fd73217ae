"""Check an SSSOM TSV file against the SSSOM project's own LinkML schema (package sssom-schema).

The SSSOM validator (`sssom validate`, package sssom) cannot be installed beside this project's
pins (requirements.txt says why), so the tests read the schema it validates against and apply it:
every metadata key and column must be a slot of the mapping set / mapping class; required slots
(and those the class's slot_usage makes required) must be set; every value must fit its slot's
range (enums, patterns, `any_of` values, URIs, CURIEs whose prefix is declared, doubles within their
bounds, dates); multivalued slots are split on "|" as the SSSOM TSV format says; and the mapping
class's rules (a literal subject needs `subject_label`, any other needs `subject_id`; likewise for
objects) hold, with the set's propagatable slots (`subject_type`...) applied to every row.
Returns a list of problems, empty when the file conforms.
"""

from __future__ import annotations

import csv
import datetime
import importlib.util
import io
import re
from functools import lru_cache
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import yaml

_CURIE = re.compile(r"^([A-Za-z_][A-Za-z0-9_.-]*):(\S*)$")


@lru_cache(maxsize=1)
def schema() -> dict[str, Any]:
    """The LinkML schema shipped by sssom-schema (read as a file: importing the package needs linkml)."""
    spec = importlib.util.find_spec("sssom_schema")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("sssom-schema is not installed; run `bash scripts/setup.sh`")
    path = Path(spec.submodule_search_locations[0]) / "schema" / "sssom_schema.yaml"
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def read_sssom_tsv(text: str) -> tuple[dict[str, Any], list[dict[str, str]]]:
    """(metadata, rows) of an SSSOM TSV file with its metadata block embedded as `#` lines."""
    lines = text.splitlines(keepends=True)
    block = [line[1:] for line in lines if line.startswith("#")]
    body = "".join(line for line in lines if not line.startswith("#"))
    meta = yaml.safe_load("".join(block)) or {}
    rows = list(csv.DictReader(io.StringIO(body), delimiter="\t", quoting=csv.QUOTE_NONE))
    return meta, rows


def _class_slots(name: str) -> tuple[set[str], set[str]]:
    cls = schema()["classes"][name]
    slots = set(cls["slots"])
    required = {slot for slot in slots if schema()["slots"][slot].get("required")}
    required |= {slot for slot, usage in (cls.get("slot_usage") or {}).items() if usage.get("required")}
    return slots, required


def _check_value(slot: str, value: Any, prefixes: set[str]) -> list[str]:
    definition = schema()["slots"][slot]
    values = value if isinstance(value, list) else (
        str(value).split("|") if definition.get("multivalued") else [value])
    problems = []
    for item in values:
        problems += [f"{slot}={item!r}: {problem}" for problem in _check_one(definition, item, prefixes)]
    return problems


def _check_one(definition: dict[str, Any], value: Any, prefixes: set[str]) -> list[str]:
    out = []
    kind = definition.get("range", schema().get("default_range", "string"))
    text = value.isoformat() if isinstance(value, datetime.date) else str(value)
    enums = schema().get("enums", {})
    if kind in enums and text not in enums[kind]["permissible_values"]:
        out.append(f"not one of {sorted(enums[kind]['permissible_values'])}")
    if kind == "EntityReference":
        found = _CURIE.match(text)
        if not found:
            out.append("not a CURIE")
        elif found.group(1) not in prefixes:
            out.append(f"prefix {found.group(1)!r} is not in the curie_map (nor built in)")
    if kind == "uri":
        parsed = urlparse(text)
        if not parsed.scheme or not (parsed.netloc or parsed.path):
            out.append("not a URI")
    if kind == "double":
        try:
            number = float(text)
        except ValueError:
            out.append("not a number")
        else:
            low, high = definition.get("minimum_value"), definition.get("maximum_value")
            if (low is not None and number < low) or (high is not None and number > high):
                out.append(f"outside [{low}, {high}]")
    if kind == "date":
        try:
            datetime.date.fromisoformat(text)
        except ValueError:
            out.append("not an ISO date")
    if "pattern" in definition and not re.fullmatch(definition["pattern"], text):
        out.append(f"does not match {definition['pattern']}")
    choices = definition.get("any_of", [])
    allowed = [choice["equals_string"] for choice in choices if "equals_string" in choice]
    if allowed and text not in allowed:
        out.append(f"not one of {allowed}")
    return out


def _rule_problems(row: dict[str, Any]) -> list[str]:
    out = []
    for rule in schema()["classes"]["mapping"].get("rules", []):
        condition = rule["preconditions"]["slot_conditions"]
        [(slot, test)] = condition.items()
        value = row.get(slot) or ""
        if "equals_string" in test:
            applies = value == test["equals_string"]
        else:
            applies = value != test["none_of"]["equals_string"]
        if not applies:
            continue
        for needed, post in rule["postconditions"]["slot_conditions"].items():
            if post.get("required") and not row.get(needed):
                out.append(f"{needed} is required when {slot} is {value or '(unset)'!r}")
    return out


def check_sssom_tsv(text: str) -> list[str]:
    """Problems of an SSSOM TSV file against the schema; [] when it conforms."""
    meta, rows = read_sssom_tsv(text)
    problems: list[str] = []
    set_slots, set_required = _class_slots("mapping set")
    map_slots, map_required = _class_slots("mapping")
    prefixes = set(schema().get("prefixes", {})) | set(meta.get("curie_map") or {})
    problems += [f"metadata: {key!r} is not a mapping set slot" for key in meta if key not in set_slots]
    problems += [f"metadata: required {key!r} is missing" for key in sorted(set_required)
                 if not meta.get(key)]
    for key, value in meta.items():
        if key in set_slots and key not in ("curie_map", "mappings"):
            problems += [f"metadata: {p}" for p in _check_value(key, value, prefixes)]
    for prefix, expansion in (meta.get("curie_map") or {}).items():
        if not urlparse(str(expansion)).scheme:
            problems.append(f"curie_map: {prefix} expands to {expansion!r}, not a URI")
    columns = list(rows[0]) if rows else []
    problems += [f"column {column!r} is not a mapping slot" for column in columns if column not in map_slots]
    propagated = {
        slot: meta[slot] for slot in meta
        if slot in map_slots and (schema()["slots"][slot].get("annotations") or {}).get("propagated")
    }
    for number, row in enumerate(rows, start=1):
        filled = {**propagated, **{k: v for k, v in row.items() if v not in ("", None)}}
        problems += [f"row {number}: required {slot!r} is missing" for slot in sorted(map_required)
                     if not filled.get(slot)]
        for slot, value in row.items():
            if value not in ("", None) and slot in map_slots:
                problems += [f"row {number}: {p}" for p in _check_value(slot, value, prefixes)]
        problems += [f"row {number}: {p}" for p in _rule_problems(filled)]
    return problems

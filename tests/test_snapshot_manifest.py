"""The manifest is the restore's source of truth: it must round-trip and refuse anything malformed."""

from __future__ import annotations

import copy
import json

import pytest

from ontosearch.constants import MANIFEST_NAME, SNAPSHOT_FORMAT_VERSION
from ontosearch.manifest import Manifest, ManifestError

GOOD = {
    "format_version": SNAPSHOT_FORMAT_VERSION,
    "version": None,
    "created": "2026-01-02T03:04:05+00:00",
    "chroma_version": "1.5.9",
    "embedder": {"name": "all-MiniLM-L6-v2", "dimensions": 384, "pooling": "mean", "normalize": True},
    "collections": [{"name": "cl_2025_04_10", "ontology": "cl", "source_version": "2025-04-10",
                     "terms": 3000, "records": 9000}],
    "archive": {"name": "persist.tar.gz", "sha256": "a" * 64, "bytes": 1234, "compression": "gz"},
    "persist_bytes": 99999,
}


def test_manifest_round_trips_through_save_and_load(tmp_path):
    manifest = Manifest.from_dict(GOOD)
    manifest.version = "20260102T030405Z-aaaaaaaa"
    manifest.save(tmp_path)
    loaded = Manifest.load(tmp_path)
    assert loaded == manifest
    assert json.loads((tmp_path / MANIFEST_NAME).read_text())["version"] == "20260102T030405Z-aaaaaaaa"
    assert loaded.label == "snapshot 20260102T030405Z-aaaaaaaa"
    assert not list(tmp_path.glob(".*.tmp")), "the atomic save leaves no temp file"


def _broken(path: str, value):
    data = copy.deepcopy(GOOD)
    target = data
    keys = path.split(".")
    for key in keys[:-1]:
        target = target[int(key)] if isinstance(target, list) else target[key]
    if value is KeyError:
        del target[keys[-1]]
    else:
        target[keys[-1]] = value
    return data


@pytest.mark.parametrize(
    ("path", "value", "message"),
    [
        ("format_version", 2, "snapshot format 2 is newer than this ontosearch understands"),
        ("format_version", 0, "snapshot format 0 is not supported"),
        ("format_version", "1", "format_version must be an integer"),
        ("chroma_version", "", "chroma_version must be a non-empty string"),
        ("created", "yesterday", "created must be an ISO 8601 time"),
        ("created", "2026-01-02T03:04:05", "created must carry a time zone"),
        ("embedder.dimensions", 0, "embedder.dimensions must be an integer >= 1"),
        ("embedder.normalize", "yes", "embedder.normalize must be true or false"),
        ("embedder.name", KeyError, "embedder.name must be a non-empty string"),
        ("collections", [], "collections must be a non-empty list"),
        ("collections.0.name", "x", "is not a valid Chroma collection name"),
        ("collections.0.records", -1, "collections[0].records must be an integer >= 0"),
        ("collections.0.records", True, "collections[0].records must be an integer >= 0"),
        ("collections.0.colour", "red", "collections[0] has unknown field(s) colour"),
        ("archive.sha256", "ABC", "archive.sha256 must be 64 lowercase hex digits"),
        ("archive.name", "../persist.tar.gz", "archive.name must be a plain file name"),
        ("archive.name", "/etc/passwd", "archive.name must be a plain file name"),
        ("archive.compression", "bz2", "archive.compression must be one of gz, xz, zst"),
        ("archive.bytes", 0, "archive.bytes must be an integer >= 1"),
        ("persist_bytes", None, "persist_bytes must be an integer >= 1"),
        ("version", "../v1", "version must be null or a name of letters"),
        ("extra_field", 1, "unknown field(s) extra_field"),
    ],
)
def test_invalid_manifest_is_refused_naming_the_field(path, value, message):
    with pytest.raises(ManifestError) as info:
        Manifest.from_dict(_broken(path, value), source="m.json")
    assert message in str(info.value)
    assert str(info.value).startswith("m.json: ")


def test_duplicate_collections_are_refused():
    data = copy.deepcopy(GOOD)
    data["collections"].append(dict(data["collections"][0]))
    with pytest.raises(ManifestError, match="collection\\(s\\) listed twice: cl_2025_04_10"):
        Manifest.from_dict(data)


def test_missing_or_garbled_manifest_file_says_what_to_do(tmp_path):
    with pytest.raises(ManifestError, match="no manifest.json at .*build-snapshot"):
        Manifest.load(tmp_path)
    (tmp_path / MANIFEST_NAME).write_text("{not json")
    with pytest.raises(ManifestError, match="is not valid JSON .*rebuild it"):
        Manifest.load(tmp_path)

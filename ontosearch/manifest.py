"""The snapshot manifest: what a snapshot holds and what it needs to be opened safely.

A restore trusts nothing it has not checked against this file, so loading is strict: every field is
validated and a bad one is named in the error, with what to do about it. Standard library only: the
task's restore image loads this module.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ontosearch.constants import MANIFEST_NAME, SNAPSHOT_FORMAT_VERSION

COMPRESSIONS = ("gz", "xz", "zst")
# Chroma's own rule for collection names (3-512 characters, alphanumeric at both ends).
_COLLECTION_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{1,510}[A-Za-z0-9]$")
# Versions become S3 key segments and directory names: keep them to a safe alphabet.
VERSION_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_ARCHIVE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


class ManifestError(ValueError):
    """A manifest is missing, unreadable or does not describe a usable snapshot."""


@dataclass(frozen=True)
class CollectionInfo:
    name: str
    ontology: str
    source_version: str
    terms: int
    records: int


@dataclass(frozen=True)
class ArchiveInfo:
    name: str
    sha256: str
    bytes: int
    compression: str


@dataclass
class Manifest:
    format_version: int
    chroma_version: str
    embedder: dict[str, Any]
    collections: list[CollectionInfo]
    archive: ArchiveInfo
    persist_bytes: int
    created: str
    version: str | None = None

    @property
    def label(self) -> str:
        """How messages name this snapshot: by its published version when it has one."""
        return f"snapshot {self.version}" if self.version else f"snapshot built {self.created}"

    def collection_names(self) -> list[str]:
        return [c.name for c in self.collections]

    def to_dict(self) -> dict[str, Any]:
        data = {
            "format_version": self.format_version,
            "version": self.version,
            "created": self.created,
            "chroma_version": self.chroma_version,
            "embedder": dict(self.embedder),
            "collections": [asdict(c) for c in self.collections],
            "archive": asdict(self.archive),
            "persist_bytes": self.persist_bytes,
        }
        return data

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=False) + "\n"

    def save(self, directory: str | Path) -> Path:
        """Write `manifest.json` into `directory` atomically (a reader never sees half a manifest)."""
        path = Path(directory) / MANIFEST_NAME
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(self.to_json(), encoding="utf-8")
        tmp.replace(path)
        return path

    @classmethod
    def load(cls, path: str | Path) -> Manifest:
        """Read a manifest from a snapshot directory or a manifest file."""
        path = Path(path)
        if path.is_dir():
            path = path / MANIFEST_NAME
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise ManifestError(
                f"no {MANIFEST_NAME} at {path}; a snapshot directory is made by "
                "`python -m ontosearch build-snapshot`"
            ) from None
        except (OSError, UnicodeDecodeError) as exc:
            raise ManifestError(f"cannot read {path}: {exc}") from None
        return cls.from_json(text, source=str(path))

    @classmethod
    def from_json(cls, text: str | bytes, source: str = "manifest") -> Manifest:
        try:
            data = json.loads(text)
        except (ValueError, UnicodeDecodeError) as exc:
            raise ManifestError(
                f"{source} is not valid JSON ({exc}); the snapshot is damaged, rebuild it"
            ) from None
        return cls.from_dict(data, source=source)

    @classmethod
    def from_dict(cls, data: Any, source: str = "manifest") -> Manifest:
        """Validate every field; the first problem found is reported with the field's name."""
        check = _Checker(source)
        if not isinstance(data, dict):
            check.fail("the manifest must be a JSON object")
        fmt = data.get("format_version")
        if not isinstance(fmt, int) or isinstance(fmt, bool):
            check.fail(f"format_version must be an integer, got {fmt!r}")
        if fmt > SNAPSHOT_FORMAT_VERSION:
            check.fail(
                f"snapshot format {fmt} is newer than this ontosearch understands "
                f"({SNAPSHOT_FORMAT_VERSION}); upgrade ontosearch"
            )
        if fmt != SNAPSHOT_FORMAT_VERSION:
            check.fail(
                f"snapshot format {fmt} is not supported (expected {SNAPSHOT_FORMAT_VERSION}); "
                "rebuild the snapshot with this ontosearch"
            )
        known = {"format_version", "version", "created", "chroma_version", "embedder", "collections",
                 "archive", "persist_bytes"}
        unknown = sorted(set(data) - known)
        if unknown:
            check.fail(f"unknown field(s) {', '.join(unknown)} for format {fmt}")

        version = data.get("version")
        if version is not None and (not isinstance(version, str) or not VERSION_PATTERN.match(version)):
            check.fail(f"version must be null or a name of letters, digits, '.', '_' or '-', got {version!r}")
        created = check.text(data, "created")
        try:
            stamp = datetime.fromisoformat(created)
        except ValueError:
            check.fail(f"created must be an ISO 8601 time, got {created!r}")
        if stamp.tzinfo is None:
            check.fail(f"created must carry a time zone (UTC), got {created!r}")
        chroma_version = check.text(data, "chroma_version")

        embedder = data.get("embedder")
        if not isinstance(embedder, dict):
            check.fail("embedder must be an object with name, dimensions, pooling and normalize")
        check.text(embedder, "name", "embedder.name")
        check.count(embedder, "dimensions", "embedder.dimensions", minimum=1)
        check.text(embedder, "pooling", "embedder.pooling")
        if not isinstance(embedder.get("normalize"), bool):
            check.fail(f"embedder.normalize must be true or false, got {embedder.get('normalize')!r}")

        raw_collections = data.get("collections")
        if not isinstance(raw_collections, list) or not raw_collections:
            check.fail("collections must be a non-empty list")
        collections: list[CollectionInfo] = []
        for i, raw in enumerate(raw_collections):
            where = f"collections[{i}]"
            if not isinstance(raw, dict):
                check.fail(f"{where} must be an object")
            extra = sorted(set(raw) - {"name", "ontology", "source_version", "terms", "records"})
            if extra:
                check.fail(f"{where} has unknown field(s) {', '.join(extra)}")
            name = check.text(raw, "name", f"{where}.name")
            if not _COLLECTION_NAME.match(name):
                check.fail(f"{where}.name {name!r} is not a valid Chroma collection name")
            collections.append(CollectionInfo(
                name=name,
                ontology=check.text(raw, "ontology", f"{where}.ontology"),
                source_version=check.text(raw, "source_version", f"{where}.source_version"),
                terms=check.count(raw, "terms", f"{where}.terms"),
                records=check.count(raw, "records", f"{where}.records"),
            ))
        names = [c.name for c in collections]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            check.fail(f"collection(s) listed twice: {', '.join(duplicates)}")

        raw_archive = data.get("archive")
        if not isinstance(raw_archive, dict):
            check.fail("archive must be an object with name, sha256, bytes and compression")
        extra = sorted(set(raw_archive) - {"name", "sha256", "bytes", "compression"})
        if extra:
            check.fail(f"archive has unknown field(s) {', '.join(extra)}")
        archive_name = check.text(raw_archive, "name", "archive.name")
        if not _ARCHIVE_NAME.match(archive_name):
            check.fail(f"archive.name must be a plain file name, got {archive_name!r}")
        sha256 = check.text(raw_archive, "sha256", "archive.sha256")
        if not _SHA256.match(sha256):
            check.fail(f"archive.sha256 must be 64 lowercase hex digits, got {sha256!r}")
        compression = check.text(raw_archive, "compression", "archive.compression")
        if compression not in COMPRESSIONS:
            check.fail(f"archive.compression must be one of {', '.join(COMPRESSIONS)}, got {compression!r}")
        archive = ArchiveInfo(
            name=archive_name,
            sha256=sha256,
            bytes=check.count(raw_archive, "bytes", "archive.bytes", minimum=1),
            compression=compression,
        )
        return cls(
            format_version=fmt, chroma_version=chroma_version, embedder=dict(embedder),
            collections=collections, archive=archive,
            persist_bytes=check.count(data, "persist_bytes", minimum=1), created=created, version=version,
        )


def utc_now_iso() -> str:
    """The `created` stamp: UTC, second precision, explicit offset."""
    return datetime.now(UTC).replace(microsecond=0).isoformat()


class _Checker:
    def __init__(self, source: str) -> None:
        self.source = source

    def fail(self, problem: str) -> Any:
        raise ManifestError(f"{self.source}: {problem}")

    def text(self, data: dict[str, Any], key: str, where: str | None = None) -> str:
        value = data.get(key)
        if not isinstance(value, str) or not value.strip():
            self.fail(f"{where or key} must be a non-empty string, got {value!r}")
        return value

    def count(self, data: dict[str, Any], key: str, where: str | None = None, minimum: int = 0) -> int:
        value = data.get(key)
        if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
            self.fail(f"{where or key} must be an integer >= {minimum}, got {value!r}")
        return value

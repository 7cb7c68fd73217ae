"""Restore refuses every damaged or mismatched snapshot with a message naming the problem, and never
leaves a half-restored directory behind. Snapshots here are real (a chromadb PersistentClient wrote
them, build-snapshot's code archived and verified them with a fresh `chroma run`)."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
from snapshot_helpers import SNAPSHOT_COLLECTIONS as COLLECTIONS
from snapshot_helpers import copy_snapshot

from ontosearch.archive import sha256_file
from ontosearch.constants import CHROMA_VERSION, MANIFEST_NAME, RESTORED_MANIFEST_NAME
from ontosearch.manifest import Manifest, ManifestError
from ontosearch.restore import STAGING_PREFIX, RestoreError, main, read_restored_manifest, restore_from_dir

pytest_plugins = ["snapshot_fixtures"]


@pytest.fixture
def snap(snapshot_pair, tmp_path) -> Path:
    """A private copy of snapshot A that a test may damage."""
    return copy_snapshot(snapshot_pair[0], tmp_path / "snap")


def _quiet(_message: str) -> None:
    pass


def _assert_nothing_restored(target: Path) -> None:
    assert not target.exists(), f"{target} must not exist after a failed restore"
    leftovers = [p.name for p in target.parent.iterdir() if p.name.startswith(STAGING_PREFIX)]
    assert leftovers == [], f"staging directories left behind: {leftovers}"


def _archive(snap: Path) -> Path:
    return snap / Manifest.load(snap).archive.name


def test_restore_places_a_verified_persist_dir_with_its_manifest(snap, tmp_path):
    target = tmp_path / "data"
    manifest = restore_from_dir(snap, target, log=_quiet)
    assert (target / "chroma.sqlite3").is_file()
    restored = read_restored_manifest(target)
    assert restored is not None and restored.archive.sha256 == manifest.archive.sha256
    assert sorted(restored.collection_names()) == sorted(COLLECTIONS)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(STAGING_PREFIX)]


def test_truncated_archive_is_refused(snap, tmp_path):
    archive = _archive(snap)
    size = archive.stat().st_size
    with open(archive, "r+b") as handle:
        handle.truncate(size // 2)
    target = tmp_path / "data"
    expected = f"archive persist.tar.gz is truncated \\({size // 2} of {size} bytes\\)"
    with pytest.raises(RestoreError, match=expected):
        restore_from_dir(snap, target, log=_quiet)
    _assert_nothing_restored(target)


def test_one_flipped_byte_is_refused(snap, tmp_path):
    archive = _archive(snap)
    data = bytearray(archive.read_bytes())
    data[len(data) // 2] ^= 0x01
    archive.write_bytes(bytes(data))
    target = tmp_path / "data"
    with pytest.raises(RestoreError, match="has sha256 .* but the manifest says .*the archive is corrupt"):
        restore_from_dir(snap, target, log=_quiet)
    _assert_nothing_restored(target)


def test_manifest_from_another_archive_is_refused(snap, snapshot_pair, tmp_path):
    other = Manifest.load(snapshot_pair[1])
    assert other.archive.sha256 != Manifest.load(snap).archive.sha256
    other.save(snap)
    target = tmp_path / "data"
    with pytest.raises(RestoreError, match="manifest belongs to another archive"):
        restore_from_dir(snap, target, log=_quiet)
    _assert_nothing_restored(target)


def test_wrong_chroma_version_is_refused_with_the_fix(snap, tmp_path):
    target = tmp_path / "data"
    with pytest.raises(RestoreError) as info:
        restore_from_dir(snap, target, expect_chroma_version="1.4.0", log=_quiet)
    assert str(info.value) == (
        f"snapshot at {snap} was built with chroma {CHROMA_VERSION} but the server is 1.4.0; "
        f"rebuild or pin chroma_version: {CHROMA_VERSION}"
    )
    _assert_nothing_restored(target)


def _edit_manifest(snap: Path, change) -> None:
    data = json.loads((snap / MANIFEST_NAME).read_text())
    change(data)
    (snap / MANIFEST_NAME).write_text(json.dumps(data))


def test_snapshot_built_by_another_chroma_is_refused(snap, tmp_path):
    _edit_manifest(snap, lambda d: d.update(chroma_version="1.6.0"))
    target = tmp_path / "data"
    with pytest.raises(RestoreError, match=f"built with chroma 1.6.0 but the server is {CHROMA_VERSION}"):
        restore_from_dir(snap, target, log=_quiet)
    _assert_nothing_restored(target)


def test_collection_missing_from_the_archive_is_refused(snap, tmp_path):
    _edit_manifest(snap, lambda d: d["collections"].append(
        {"name": "mondo_test", "ontology": "mondo", "source_version": "test", "terms": 5, "records": 5}))
    target = tmp_path / "data"
    with pytest.raises(RestoreError, match="collection\\(s\\) mondo_test named in the manifest are missing "
                                           "from the archive \\(it holds cl_test, uberon_test\\)"):
        restore_from_dir(snap, target, log=_quiet)
    _assert_nothing_restored(target)


def test_record_count_that_differs_from_the_archive_is_refused(snap, tmp_path):
    _edit_manifest(snap, lambda d: d["collections"][1].update(records=1499))
    target = tmp_path / "data"
    with pytest.raises(RestoreError, match="uberon_test holds 1500 records but the manifest says 1499"):
        restore_from_dir(snap, target, log=_quiet)
    _assert_nothing_restored(target)


def test_embedder_dimensions_that_differ_from_the_vectors_are_refused(snap, tmp_path):
    _edit_manifest(snap, lambda d: d["embedder"].update(dimensions=768))
    with pytest.raises(RestoreError, match="has 16-d vectors but the manifest's embedder .* makes 768-d"):
        restore_from_dir(snap, tmp_path / "data", log=_quiet)


def test_unknown_snapshot_format_is_refused(snap, tmp_path):
    _edit_manifest(snap, lambda d: d.update(format_version=99))
    with pytest.raises(ManifestError, match="snapshot format 99 is newer than this ontosearch understands"):
        restore_from_dir(snap, tmp_path / "data", log=_quiet)
    _assert_nothing_restored(tmp_path / "data")


def _hostile_snapshot(snap: Path, build_members, persist_bytes: int | None = None) -> None:
    """Replace the archive with a hand-made tar and make the manifest match it (sha256 and size)."""
    archive = _archive(snap)
    with tarfile.open(archive, "w:gz") as tar:
        build_members(tar)
    def update(data):
        data["archive"].update(sha256=sha256_file(archive), bytes=archive.stat().st_size)
        if persist_bytes is not None:
            data["persist_bytes"] = persist_bytes
    _edit_manifest(snap, update)


def _add_file(tar: tarfile.TarFile, name: str, payload: bytes = b"x") -> None:
    info = tarfile.TarInfo(name)
    info.size = len(payload)
    tar.addfile(info, io.BytesIO(payload))


@pytest.mark.parametrize(
    ("builder", "message"),
    [
        (lambda tar: _add_file(tar, "../escaped"), "'../escaped' points outside the archive"),
        (lambda tar: _add_file(tar, "/tmp/ontosearch-absolute"), "has an absolute path"),
        (lambda tar: tar.addfile(_link("chroma.sqlite3", "/etc/passwd")), "'chroma.sqlite3' is a link"),
        (lambda tar: tar.addfile(_link("hard", "/etc/passwd", tarfile.LNKTYPE)), "'hard' is a link"),
        (lambda tar: tar.addfile(_fifo("pipe")), "'pipe' is a special file"),
    ],
)
def test_archive_members_outside_the_directory_or_not_plain_files_are_refused(snap, tmp_path, builder,
                                                                              message):
    _hostile_snapshot(snap, builder)
    target = tmp_path / "data"
    with pytest.raises(RestoreError, match=message):
        restore_from_dir(snap, target, log=_quiet)
    _assert_nothing_restored(target)
    assert not (tmp_path / "escaped").exists()
    assert not Path("/tmp/ontosearch-absolute").exists()


def _link(name: str, target: str, kind: bytes = tarfile.SYMTYPE) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = target
    return info


def _fifo(name: str) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = tarfile.FIFOTYPE
    return info


def test_archive_that_expands_beyond_its_manifest_is_refused(snap, tmp_path):
    _hostile_snapshot(snap, lambda tar: _add_file(tar, "chroma.sqlite3", b"\0" * 100_000), persist_bytes=1000)
    target = tmp_path / "data"
    with pytest.raises(RestoreError, match="expands beyond the 1000 bytes its manifest announced"):
        restore_from_dir(snap, target, log=_quiet)
    _assert_nothing_restored(target)


def test_archive_without_a_chroma_database_is_refused(snap, tmp_path):
    _hostile_snapshot(snap, lambda tar: _add_file(tar, "notes.txt", b"hello"))
    with pytest.raises(RestoreError, match="holds no chroma.sqlite3, so it is not a Chroma persist"):
        restore_from_dir(snap, tmp_path / "data", log=_quiet)
    _assert_nothing_restored(tmp_path / "data")


def test_existing_data_is_kept_unless_replace_is_asked(snap, snapshot_pair, tmp_path):
    target = tmp_path / "data"
    restore_from_dir(snapshot_pair[1], target, log=_quiet)
    before = read_restored_manifest(target)
    with pytest.raises(RestoreError, match="already holds snapshot built .*; pass --replace to swap it for"):
        restore_from_dir(snap, target, log=_quiet)
    assert read_restored_manifest(target) == before

    restored = restore_from_dir(snap, target, replace=True, log=_quiet)
    assert read_restored_manifest(target).archive.sha256 == restored.archive.sha256 != before.archive.sha256
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_failed_replace_keeps_the_previous_data_intact(snap, snapshot_pair, tmp_path):
    target = tmp_path / "data"
    restore_from_dir(snapshot_pair[1], target, log=_quiet)
    files_before = sorted(p.relative_to(target) for p in target.rglob("*"))
    archive = _archive(snap)
    data = bytearray(archive.read_bytes())
    data[100] ^= 0xFF
    archive.write_bytes(bytes(data))
    with pytest.raises(RestoreError, match="sha256"):
        restore_from_dir(snap, target, replace=True, log=_quiet)
    assert sorted(p.relative_to(target) for p in target.rglob("*")) == files_before
    assert read_restored_manifest(target).archive.sha256 == Manifest.load(snapshot_pair[1]).archive.sha256


def test_restoring_the_same_snapshot_again_does_nothing(snap, tmp_path):
    target = tmp_path / "data"
    restore_from_dir(snap, target, log=_quiet)
    stamp = (target / "chroma.sqlite3").stat().st_mtime_ns
    messages: list[str] = []
    restore_from_dir(snap, target, log=messages.append)
    assert any("already holds" in m for m in messages)
    assert (target / "chroma.sqlite3").stat().st_mtime_ns == stamp


def test_volume_restore_moves_entries_in_and_marks_completion_last(snap, tmp_path):
    volume = tmp_path / "volume"
    (volume / "lost+found").mkdir(parents=True)
    (volume / f"{STAGING_PREFIX}stale").mkdir()  # left by a killed restore
    manifest = restore_from_dir(snap, volume, in_place=True, log=_quiet)
    names = set(os.listdir(volume))
    assert {"chroma.sqlite3", RESTORED_MANIFEST_NAME, "lost+found"} <= names
    assert not [n for n in names if n.startswith(STAGING_PREFIX)]
    assert read_restored_manifest(volume).archive.sha256 == manifest.archive.sha256


def test_failed_volume_restore_leaves_the_volume_as_it_was(snap, tmp_path):
    volume = tmp_path / "volume"
    (volume / "lost+found").mkdir(parents=True)
    archive = _archive(snap)
    with open(archive, "r+b") as handle:
        handle.truncate(archive.stat().st_size - 10)
    with pytest.raises(RestoreError, match="truncated"):
        restore_from_dir(snap, volume, in_place=True, log=_quiet)
    assert os.listdir(volume) == ["lost+found"]


def test_cli_exits_nonzero_with_one_line_naming_the_problem(snap, tmp_path, capsys):
    target = tmp_path / "data"
    code = main(["--from", str(snap), "--into", str(target), "--chroma-version", "1.4.0"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1
    assert err[-1].startswith("restore-snapshot: snapshot at ")
    assert err[-1].endswith(f"but the server is 1.4.0; rebuild or pin chroma_version: {CHROMA_VERSION}")
    _assert_nothing_restored(target)

    assert main(["--from", str(snap), "--into", str(target)]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert sorted(out["collections"]) == sorted(COLLECTIONS)


def test_restore_runs_without_chromadb_numpy_or_torch(snap, tmp_path):
    """The task's restore image has only the standard library and boto3."""
    script = (
        "import sys\n"
        "from ontosearch.__main__ import main\n"
        f"code = main(['restore-snapshot', '--from', {str(snap)!r}, '--into', {str(tmp_path / 'data')!r}])\n"
        "heavy = sorted(m for m in ('chromadb', 'numpy', 'torch', 'pulumi') if m in sys.modules)\n"
        "print(code, heavy)\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60,
                            cwd=Path(__file__).resolve().parents[1])
    assert result.stdout.strip().splitlines()[-1] == "0 []", result.stderr


def test_mount_points_are_detected_so_a_volume_is_filled_in_place(tmp_path):
    from ontosearch.restore import is_mount_point

    assert is_mount_point("/")
    assert not is_mount_point(tmp_path)


def test_cli_reports_an_unusable_target_in_one_line(snap, tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    assert main(["--from", str(snap), "--into", str(blocker / "data")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"restore-snapshot: cannot restore into {blocker / 'data'}")
    assert main(["--from", str(snap), "--into", str(blocker)]) == 1
    assert "exists and is not a directory" in capsys.readouterr().err

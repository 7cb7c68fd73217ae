"""One tar archive of a Chroma persist directory: write it, check it, unpack it safely.

The archive is the unit a snapshot's sha256 covers. Unpacking treats it as untrusted even after the
checksum matched (the manifest could come from elsewhere): only plain files and directories, only
relative paths inside the destination, and no more bytes than the manifest announced. Standard library
only (zstd through the optional `zstandard` module): the task's restore image loads this module.
"""

from __future__ import annotations

import gzip
import hashlib
import lzma
import os
import stat
import tarfile
import zlib
from collections.abc import Callable
from pathlib import Path, PurePosixPath
from typing import IO, Any

from ontosearch.manifest import COMPRESSIONS

ARCHIVE_STEM = "persist.tar"
# Extraction filters (PEP 706) arrived in 3.11.4; they back up the member checks below.
_HAS_FILTERS = hasattr(tarfile, "data_filter")
_CHUNK = 1024 * 1024


class ArchiveError(RuntimeError):
    """An archive is damaged, unsafe, or does not match what its manifest says."""


def archive_file_name(compression: str) -> str:
    if compression not in COMPRESSIONS:
        raise ArchiveError(f"unknown compression {compression!r}; choose one of {', '.join(COMPRESSIONS)}")
    return f"{ARCHIVE_STEM}.{compression}"


def zstd_available() -> bool:
    try:
        import zstandard  # noqa: F401
    except ImportError:
        return False
    return True


def available_compressions() -> list[str]:
    return [c for c in COMPRESSIONS if c != "zst" or zstd_available()]


def _zstandard() -> Any:
    try:
        import zstandard
    except ImportError:
        raise ArchiveError(
            "the archive uses zst compression but the `zstandard` module is not installed; "
            "install it or rebuild the snapshot with --compression gz"
        ) from None
    return zstandard


def directory_bytes(path: str | Path) -> int:
    """Total size of the regular files under `path` (what the archive expands to)."""
    total = 0
    for root, _dirs, files in os.walk(path):
        for name in files:
            total += os.lstat(os.path.join(root, name)).st_size
    return total


def sha256_file(path: str | Path, progress: Callable[[int], None] | None = None) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
            if progress is not None:
                progress(len(chunk))
    return digest.hexdigest()


def _members(persist_dir: Path) -> list[Path]:
    """Every entry under the persist directory, parents first, in a stable order."""
    entries: list[Path] = []
    for root, dirs, files in os.walk(persist_dir):
        dirs.sort()
        base = Path(root)
        for name in dirs + sorted(files):
            entry = base / name
            mode = os.lstat(entry).st_mode
            if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
                raise ArchiveError(
                    f"{entry} is neither a file nor a directory; a persist directory to archive "
                    "may hold only plain files and directories"
                )
            entries.append(entry)
    return entries


def create_archive(
    persist_dir: str | Path,
    out_path: str | Path,
    compression: str = "gz",
    progress: Callable[[int], None] | None = None,
) -> tuple[str, int]:
    """Archive the contents of `persist_dir` (paths relative to it) into `out_path`.

    Returns (sha256, size in bytes) of the written archive. Owner names and ids are dropped so the
    archive does not depend on who built it. `progress` receives the size of each file added.
    """
    persist_dir = Path(persist_dir)
    archive_file_name(compression)  # validates the choice
    if not (persist_dir / "chroma.sqlite3").is_file():
        raise ArchiveError(f"{persist_dir} holds no chroma.sqlite3; it is not a Chroma persist directory")
    entries = _members(persist_dir)

    def scrub(info: tarfile.TarInfo) -> tarfile.TarInfo:
        info.uid = info.gid = 0
        info.uname = info.gname = ""
        return info

    out_path = Path(out_path)
    with open(out_path, "wb") as raw:
        if compression == "zst":
            compressor = _zstandard().ZstdCompressor(level=10, threads=-1)
            with compressor.stream_writer(raw, closefd=False) as writer:
                _write_tar(tarfile.open(fileobj=writer, mode="w|", format=tarfile.PAX_FORMAT),
                           persist_dir, entries, scrub, progress)
        else:
            mode = "w:gz" if compression == "gz" else "w:xz"
            options = {"compresslevel": 6} if compression == "gz" else {}
            _write_tar(tarfile.open(fileobj=raw, mode=mode, format=tarfile.PAX_FORMAT, **options),
                       persist_dir, entries, scrub, progress)
        raw.flush()
        os.fsync(raw.fileno())
    return sha256_file(out_path), out_path.stat().st_size


def _write_tar(
    tar: tarfile.TarFile,
    base: Path,
    entries: list[Path],
    scrub: Callable[[tarfile.TarInfo], tarfile.TarInfo],
    progress: Callable[[int], None] | None,
) -> None:
    with tar:
        for entry in entries:
            info = scrub(tar.gettarinfo(str(entry), arcname=entry.relative_to(base).as_posix()))
            if info.isfile():
                with open(entry, "rb") as handle:
                    tar.addfile(info, handle)
                if progress is not None:
                    progress(info.size)
            else:
                tar.addfile(info)


def check_archive_file(path: str | Path, sha256: str, size: int, label: str) -> None:
    """Refuse an archive whose size or checksum differs from its manifest's."""
    path = Path(path)
    try:
        actual_size = path.stat().st_size
    except FileNotFoundError:
        raise ArchiveError(f"{label}: archive {path.name} is missing") from None
    if actual_size < size:
        raise ArchiveError(
            f"{label}: archive {path.name} is truncated ({actual_size} of {size} bytes) or the manifest "
            "belongs to another archive; download or copy the snapshot again"
        )
    if actual_size > size:
        raise ArchiveError(
            f"{label}: archive {path.name} has {actual_size} bytes but the manifest says {size}; "
            "the manifest belongs to another archive or the archive was altered"
        )
    actual = sha256_file(path)
    if actual != sha256:
        raise ArchiveError(
            f"{label}: archive {path.name} has sha256 {actual[:12]}... but the manifest says "
            f"{sha256[:12]}...; the archive is corrupt or the manifest belongs to another archive"
        )


def _safe_name(name: str) -> str | None:
    """Why a member name is unsafe, or None when it is a plain relative path."""
    if not name or "\x00" in name or "\\" in name:
        return "has an unusual name"
    path = PurePosixPath(name)
    if path.is_absolute():
        return "has an absolute path"
    if any(part == ".." for part in path.parts):
        return "points outside the archive (..)"
    return None


def check_member(member: tarfile.TarInfo) -> None:
    problem = _safe_name(member.name)
    if problem is None and not (member.isfile() or member.isdir()):
        kind = "a link" if (member.issym() or member.islnk()) else "a special file"
        problem = f"is {kind}"
    if problem is not None:
        raise ArchiveError(
            f"archive member {member.name!r} {problem}; a snapshot archive holds only files and "
            "directories inside the persist directory, so this archive was not made by build-snapshot"
        )


def extract_archive(
    path: str | Path,
    compression: str,
    dest: str | Path,
    max_bytes: int | None = None,
    progress: Callable[[int], None] | None = None,
) -> int:
    """Unpack the archive into the existing directory `dest`, one member at a time.

    Streams (no random access), so a damaged archive fails at the first bad block; every member is
    checked before it is written. Returns the number of file bytes written. The caller owns `dest`
    and removes it on failure.
    """
    dest = Path(dest)
    written = 0
    try:
        with open(path, "rb") as raw:
            stream: IO[bytes]
            if compression == "zst":
                stream = _zstandard().ZstdDecompressor().stream_reader(raw, closefd=False)
                mode = "r|"
            elif compression in ("gz", "xz"):
                stream, mode = raw, f"r|{compression}"
            else:
                raise ArchiveError(f"unknown archive compression {compression!r}")
            with tarfile.open(fileobj=stream, mode=mode) as tar:
                for member in tar:
                    check_member(member)
                    if member.isfile():
                        written += member.size
                        if max_bytes is not None and written > max_bytes:
                            raise ArchiveError(
                                f"archive expands beyond the {max_bytes} bytes its manifest announced; "
                                "it was not made by build-snapshot"
                            )
                    if _HAS_FILTERS:
                        tar.extract(member, dest, set_attrs=True, filter="data")
                    else:  # Python < 3.11.4: check_member above already refused what the filter would
                        tar.extract(member, dest, set_attrs=True)
                    if progress is not None and member.isfile():
                        progress(member.size)
    except ArchiveError:
        raise
    except (tarfile.TarError, EOFError, zlib.error, lzma.LZMAError, gzip.BadGzipFile) as exc:
        problem = f"{type(exc).__name__}: {exc}"
        raise ArchiveError(f"archive cannot be unpacked ({problem}); it is damaged") from None
    except OSError as exc:
        raise ArchiveError(f"unpacking into {dest} failed: {exc}") from None
    except Exception as exc:  # zstandard.ZstdError and friends
        if type(exc).__module__.startswith("zstandard"):
            raise ArchiveError(f"archive cannot be unpacked (zstd: {exc}); it is damaged") from None
        raise
    return written

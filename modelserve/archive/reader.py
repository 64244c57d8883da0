"""Safe reading and extraction of model archives: ``.mar``/zip, ``.tar.gz`` and plain directories.

Unsafe archives are rejected, never sanitized: the first offending entry is named in the error and nothing is written
outside a fresh staging directory, which is removed again when extraction fails.
"""

from __future__ import annotations

import os
import shutil
import stat
import tarfile
import tempfile
import zipfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import IO

from modelserve.archive.builtin import builtin_handler_path
from modelserve.archive.errors import (
    ArchiveError,
    ArchiveLimitError,
    ArchiveNotFoundError,
    ManifestError,
    UnsafeEntryError,
)
from modelserve.archive.manifest import MANIFEST_PATH, Manifest

_CHUNK = 1 << 20


@dataclass(frozen=True)
class ArchiveLimits:
    """Bounds that stop zip bombs and runaway archives."""

    max_total_bytes: int = 16 << 30
    max_entries: int = 10_000
    # an entry may expand at most this many times its compressed size (checked for entries over ratio_floor_bytes)
    max_ratio: float = 200.0
    ratio_floor_bytes: int = 1 << 20


@dataclass(frozen=True)
class ExtractedArchive:
    """An archive unpacked into ``root``, inside the fresh ``staging`` directory the caller owns and removes."""

    root: Path
    staging: Path
    manifest: Manifest

    def cleanup(self) -> None:
        shutil.rmtree(self.staging, ignore_errors=True)


def check_entry_name(name: str) -> PurePosixPath:
    """Validate one entry name and return it as a relative POSIX path; raise UnsafeEntryError otherwise."""
    if not name:
        raise UnsafeEntryError(name, "empty name")
    if "\x00" in name:
        raise UnsafeEntryError(name, "NUL byte in name")
    if "\\" in name:
        raise UnsafeEntryError(name, "backslash in name")
    if name.startswith("/") or (len(name) > 1 and name[1] == ":"):
        raise UnsafeEntryError(name, "absolute path")
    path = PurePosixPath(name)
    if any(part == ".." for part in path.parts):
        raise UnsafeEntryError(name, "'..' in path")
    if not path.parts or path.parts == (".",):
        raise UnsafeEntryError(name, "names no file")
    return path


class _Budget:
    """Counts entries and bytes across one extraction."""

    def __init__(self, limits: ArchiveLimits) -> None:
        self.limits = limits
        self.entries = 0
        self.total = 0

    def add_entry(self, name: str) -> None:
        self.entries += 1
        if self.entries > self.limits.max_entries:
            raise ArchiveLimitError(f"archive has more than {self.limits.max_entries} entries (stopped at {name!r})")

    def check_declared(self, name: str, size: int, compressed: int | None) -> None:
        if size > self.limits.max_total_bytes:
            raise ArchiveLimitError(
                f"entry {name!r} declares {size} bytes, over the limit of {self.limits.max_total_bytes}"
            )
        if compressed is None:
            return
        if size > self.limits.ratio_floor_bytes and size > self.limits.max_ratio * max(compressed, 1):
            raise ArchiveLimitError(
                f"entry {name!r} expands {size / max(compressed, 1):.0f}x "
                f"(limit {self.limits.max_ratio:.0f}x): refusing a possible zip bomb"
            )

    def add_bytes(self, name: str, count: int) -> None:
        self.total += count
        if self.total > self.limits.max_total_bytes:
            raise ArchiveLimitError(
                f"archive expands past {self.limits.max_total_bytes} bytes "
                f"(at entry {name!r}): refusing a possible bomb"
            )


def _copy_stream(src: IO[bytes], dest: Path, name: str, budget: _Budget, ratio_base: int | None) -> None:
    written = 0
    with open(dest, "xb") as out:
        while chunk := src.read(_CHUNK):
            written += len(chunk)
            budget.add_bytes(name, len(chunk))
            if ratio_base is not None:
                # a lying header cannot hide a bomb: check the bytes actually produced
                budget.check_declared(name, written, ratio_base)
            out.write(chunk)


def _prepare_target(staging: Path, path: PurePosixPath, seen: set[str], name: str) -> Path:
    key = str(path)
    if key in seen:
        raise UnsafeEntryError(name, "duplicate entry name")
    seen.add(key)
    target = staging.joinpath(*path.parts)
    target.parent.mkdir(parents=True, exist_ok=True)
    return target


def _extract_zip(source: Path, staging: Path, limits: ArchiveLimits) -> None:
    try:
        archive = zipfile.ZipFile(source)
    except (zipfile.BadZipFile, OSError, NotImplementedError, ValueError, EOFError) as exc:
        raise ArchiveError(f"{source.name} is not a readable zip archive: {exc}") from None
    with archive:
        infos = archive.infolist()
        budget = _Budget(limits)
        seen: set[str] = set()
        for info in infos:
            budget.add_entry(info.filename)
            if "\x00" in info.orig_filename:
                # zipfile cuts names at NUL; the raw name is what another tool would write
                raise UnsafeEntryError(info.orig_filename, "NUL byte in name")
            file_type = stat.S_IFMT(info.external_attr >> 16)
            if file_type == stat.S_IFLNK:
                raise UnsafeEntryError(info.filename, "symbolic link")
            if file_type not in (0, stat.S_IFREG, stat.S_IFDIR):
                raise UnsafeEntryError(info.filename, "not a regular file or directory")
            path = check_entry_name(info.filename.rstrip("/") if info.is_dir() else info.filename)
            if info.is_dir():
                key = str(path) + "/"
                if key in seen:
                    raise UnsafeEntryError(info.filename, "duplicate entry name")
                seen.add(key)
                staging.joinpath(*path.parts).mkdir(parents=True, exist_ok=True)
                continue
            budget.check_declared(info.filename, info.file_size, info.compress_size)
            target = _prepare_target(staging, path, seen, info.filename)
            try:
                with archive.open(info) as src:
                    _copy_stream(src, target, info.filename, budget, info.compress_size)
            except (
                zipfile.BadZipFile,
                OSError,
                EOFError,
                NotImplementedError,
                RuntimeError,
                ValueError,
                zlib.error,
            ) as exc:
                if isinstance(exc, FileExistsError):
                    raise UnsafeEntryError(info.filename, "collides with another entry") from None
                raise ArchiveError(f"cannot read entry {info.filename!r}: {exc}") from None


def _extract_tar(source: Path, staging: Path, limits: ArchiveLimits) -> None:
    compressed_size = source.stat().st_size
    try:
        archive = tarfile.open(source, mode="r:*")  # noqa: SIM115 - closed by the with block below
    except (tarfile.TarError, OSError, EOFError, zlib.error) as exc:
        raise ArchiveError(f"{source.name} is not a readable tar archive: {exc}") from None
    budget = _Budget(limits)
    seen: set[str] = set()
    with archive:
        try:
            for member in archive:
                budget.add_entry(member.name)
                if member.issym() or member.islnk():
                    raise UnsafeEntryError(member.name, "link entry")
                if member.isdev() or member.isfifo():
                    raise UnsafeEntryError(member.name, "device or FIFO entry")
                if not (member.isfile() or member.isdir()):
                    raise UnsafeEntryError(member.name, "not a regular file or directory")
                path = check_entry_name(member.name.rstrip("/") if member.isdir() else member.name)
                if member.isdir():
                    staging.joinpath(*path.parts).mkdir(parents=True, exist_ok=True)
                    continue
                budget.check_declared(member.name, member.size, None)
                target = _prepare_target(staging, path, seen, member.name)
                src = archive.extractfile(member)
                if src is None:
                    raise UnsafeEntryError(member.name, "has no data")
                with src:
                    _copy_stream(src, target, member.name, budget, None)
                # the whole stream's ratio: a small .tar.gz that expands enormously is a bomb
                if budget.total > limits.ratio_floor_bytes and budget.total > limits.max_ratio * compressed_size:
                    raise ArchiveLimitError(
                        f"archive expands {budget.total / compressed_size:.0f}x at entry {member.name!r} "
                        f"(limit {limits.max_ratio:.0f}x): refusing a possible bomb"
                    )
        except (tarfile.TarError, EOFError, OSError, ValueError, zlib.error) as exc:
            if isinstance(exc, FileExistsError):
                raise ArchiveError(f"entry collides with another entry: {exc.filename}") from None
            raise ArchiveError(f"cannot read {source.name}: {exc}") from None


def _walk_directory(source: Path) -> Iterator[tuple[Path, str]]:
    for dirpath, dirnames, filenames in os.walk(source, followlinks=False):
        base = Path(dirpath)
        for name in sorted(dirnames):
            if (base / name).is_symlink():
                raise UnsafeEntryError(str((base / name).relative_to(source)), "symbolic link")
        for name in sorted(filenames):
            yield base / name, (base / name).relative_to(source).as_posix()


def _copy_directory(source: Path, staging: Path, limits: ArchiveLimits) -> None:
    budget = _Budget(limits)
    seen: set[str] = set()
    for file_path, rel in _walk_directory(source):
        budget.add_entry(rel)
        mode = os.lstat(file_path).st_mode
        if stat.S_ISLNK(mode):
            raise UnsafeEntryError(rel, "symbolic link")
        if not stat.S_ISREG(mode):
            raise UnsafeEntryError(rel, "not a regular file")
        target = _prepare_target(staging, check_entry_name(rel), seen, rel)
        with open(file_path, "rb") as src:
            _copy_stream(src, target, rel, budget, None)


def archive_kind(source: Path) -> str:
    """``zip``, ``tar`` or ``dir``, from what the file is (not only its name)."""
    if source.is_dir():
        return "dir"
    try:
        if zipfile.is_zipfile(source):
            return "zip"
        if tarfile.is_tarfile(source):
            return "tar"
    except (OSError, EOFError, ValueError, zlib.error, tarfile.TarError) as exc:
        raise ArchiveError(f"{source.name} is a damaged archive: {exc}") from None
    raise ArchiveError(f"{source.name} is neither a zip (.mar), a tar.gz archive nor a directory")


def _find_root(staging: Path) -> Path:
    if (staging / MANIFEST_PATH).is_file():
        return staging
    # torch-model-archiver's tgz format nests everything under one top-level directory
    children = [p for p in staging.iterdir()]
    if len(children) == 1 and children[0].is_dir() and (children[0] / MANIFEST_PATH).is_file():
        return children[0]
    raise ManifestError(f"missing {MANIFEST_PATH}: not a model archive")


def validate_layout(root: Path, manifest: Manifest) -> None:
    """Every file the manifest names must be in the archive (built-in handler names excepted)."""
    for field, rel in manifest.referenced_files().items():
        path = check_entry_name(rel)
        if not root.joinpath(*path.parts).is_file():
            raise ManifestError(f"{MANIFEST_PATH}: field 'model.{field}' names {rel!r}, which is not in the archive")
    if manifest.handler_file is None:
        module = manifest.handler.split(":", 1)[0]
        if not root.joinpath(f"{module}.py").is_file() and builtin_handler_path(module) is None:
            raise ManifestError(
                f"{MANIFEST_PATH}: field 'model.handler' names {manifest.handler!r}, "
                "which is neither a file in the archive nor a built-in handler"
            )


def read_manifest(root: Path) -> Manifest:
    path = root / MANIFEST_PATH
    if not path.is_file():
        raise ManifestError(f"missing {MANIFEST_PATH}: not a model archive")
    if path.stat().st_size > 1 << 20:
        raise ManifestError(f"{MANIFEST_PATH} is larger than 1 MiB")
    return Manifest.from_json(path.read_bytes())


def extract_archive(
    source: Path, parent_dir: Path | None = None, limits: ArchiveLimits | None = None
) -> ExtractedArchive:
    """Unpack ``source`` into a fresh directory under ``parent_dir`` and validate its manifest.

    The caller owns the returned directory and removes it with ``ExtractedArchive.cleanup()``.
    """
    limits = limits or ArchiveLimits()
    if not source.exists():
        raise ArchiveNotFoundError(f"archive not found: {source.name}")
    if source.is_symlink() and source.is_dir():
        raise UnsafeEntryError(source.name, "the archive directory is a symbolic link")
    kind = archive_kind(source)
    staging = Path(tempfile.mkdtemp(prefix="modelserve-", dir=parent_dir))
    try:
        if kind == "zip":
            _extract_zip(source, staging, limits)
        elif kind == "tar":
            _extract_tar(source, staging, limits)
        else:
            _copy_directory(source, staging, limits)
        root = _find_root(staging)
        manifest = read_manifest(root)
        validate_layout(root, manifest)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return ExtractedArchive(root=root, staging=staging, manifest=manifest)


def pack_trees(trees: dict[str, Path], dest: Path) -> None:
    """Write the regular files of each directory into one zip at ``dest``, under its name (``{name}/...``).

    What a cluster node receives of a version: the archive as extracted and checked here (links refused as when
    reading a directory), unpacked there again by ``unpack_trees``. Entries are stored, not compressed: model
    weights do not shrink and the copy is the cost.
    """
    with zipfile.ZipFile(dest, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as archive:
        for name, root in trees.items():
            check_entry_name(name)
            for file_path, rel in _walk_directory(root):
                if not stat.S_ISREG(os.lstat(file_path).st_mode):
                    raise UnsafeEntryError(rel, "not a regular file")
                archive.write(file_path, f"{name}/{rel}")


def unpack_trees(source: Path, dest: Path, limits: ArchiveLimits | None = None) -> None:
    """Unpack a zip made by ``pack_trees`` into the empty directory ``dest`` with the reader's checks and limits."""
    _extract_zip(source, dest, limits or ArchiveLimits())


def checked_root(root: Path) -> Manifest:
    """The manifest of an unpacked archive at ``root``, with every file it names checked present."""
    manifest = read_manifest(root)
    validate_layout(root, manifest)
    return manifest

"""Packing model files into an archive, atomically: a temporary file or directory next to the target, then a rename."""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import tarfile
import tempfile
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from modelserve.archive.builtin import builtin_handler_names, builtin_handler_path
from modelserve.archive.errors import ArchiveNotFoundError, ArchiverUsageError, ManifestError
from modelserve.archive.manifest import MANIFEST_PATH, Manifest, check_model_name
from modelserve.archive.signing import SIGNATURE_PATH, SigningKey, signature_document

ARCHIVE_FORMATS = {"default": ".mar", "zip-store": ".mar", "tgz": ".tar.gz", "no-archive": ""}
_SKIPPED_DIRS = {"__pycache__", "__MACOSX"}
_CHUNK = 1 << 20

ProgressCallback = Callable[[int], None]


@dataclass(frozen=True)
class PackRequest:
    """Everything ``modelserve-archive`` was asked to pack."""

    model_name: str
    handler: str
    version: str = "1.0"
    serialized_file: Path | None = None
    model_file: Path | None = None
    extra_files: list[Path] = field(default_factory=list)
    requirements_file: Path | None = None
    config_file: Path | None = None
    runtime: str = "python"
    archive_format: str = "default"
    export_path: Path = Path()
    force: bool = False
    # an Ed25519 private key (OpenSSH or PEM, unencrypted): the archive gets MAR-INF/SIGNATURE.json
    sign_key: Path | None = None


def archive_path_for(request: PackRequest) -> Path:
    return request.export_path / f"{request.model_name}{ARCHIVE_FORMATS[request.archive_format]}"


def _readable_file(path: Path, what: str) -> Path:
    if not path.exists():
        raise ArchiveNotFoundError(f"{what} not found: {path}")
    if not path.is_file():
        raise ArchiverUsageError(f"{what} is not a regular file: {path}")
    if not os.access(path, os.R_OK):
        raise ArchiverUsageError(f"{what} is not readable: {path}")
    return path


def _resolve_handler(handler: str) -> tuple[Path, str]:
    """The handler's source file and the manifest's ``handler`` value."""
    module, sep, function = handler.partition(":")
    if sep and not function.isidentifier():
        raise ArchiverUsageError(f"invalid handler {handler!r}: expected FILE.py:function")
    candidate = Path(module if module.endswith(".py") else f"{module}.py")
    if candidate.is_file():
        return _readable_file(candidate, "handler file"), candidate.name + sep + function
    builtin = builtin_handler_path(module)
    if builtin is not None:
        return builtin, builtin.name + sep + function
    if Path(module).exists():
        return _readable_file(Path(module), "handler file"), Path(module).name + sep + function
    names = ", ".join(builtin_handler_names()) or "none installed"
    raise ArchiverUsageError(f"handler {handler!r} is neither a file nor a built-in handler name (built-ins: {names})")


def _expand_extra(path: Path) -> Iterator[tuple[Path, str]]:
    """Files of one ``--extra-files`` item with their archive names (a directory's content goes to the root)."""
    if not path.exists():
        raise ArchiveNotFoundError(f"extra file not found: {path}")
    if path.is_file():
        yield _readable_file(path, "extra file"), path.name
        return
    for dirpath, dirnames, filenames in os.walk(path):
        dirnames[:] = sorted(d for d in dirnames if d not in _SKIPPED_DIRS and not d.startswith("."))
        for name in sorted(filenames):
            if name.endswith(".pyc"):
                continue
            file_path = Path(dirpath) / name
            yield _readable_file(file_path, "extra file"), file_path.relative_to(path).as_posix()


def collect_entries(request: PackRequest) -> tuple[list[tuple[Path, str]], Manifest]:
    """Validate the request and list (source, archive name) pairs plus the manifest to write."""
    try:
        check_model_name(request.model_name)
    except ManifestError as exc:
        raise ArchiverUsageError(str(exc)) from None
    if request.archive_format not in ARCHIVE_FORMATS:
        raise ArchiverUsageError(
            f"unknown archive format {request.archive_format!r} (choose from {', '.join(ARCHIVE_FORMATS)})"
        )
    if not request.version or any(c in request.version for c in "/\\\x00"):
        raise ArchiverUsageError(f"invalid version {request.version!r}")
    entries: list[tuple[Path, str]] = []
    manifest_files: dict[str, str | None] = {}
    for key, path, what in (
        ("model_file", request.model_file, "model file"),
        ("serialized_file", request.serialized_file, "serialized file"),
        ("requirements_file", request.requirements_file, "requirements file"),
        ("config_file", request.config_file, "config file"),
    ):
        if path is not None:
            entries.append((_readable_file(path, what), path.name))
            manifest_files[key] = path.name
    handler_source, handler_value = _resolve_handler(request.handler)
    entries.append((handler_source, handler_source.name))
    for extra in request.extra_files:
        entries.extend(_expand_extra(extra))
    unique: dict[str, Path] = {}
    for source, name in entries:
        if name in (MANIFEST_PATH, SIGNATURE_PATH):
            raise ArchiverUsageError(f"{source} would be stored as {name}, which the archiver writes itself")
        previous = unique.get(name)
        if previous is not None and previous.resolve() != source.resolve():
            raise ArchiverUsageError(f"two different files would be stored as {name!r}: {previous} and {source}")
        unique[name] = source
    manifest = Manifest(
        model_name=request.model_name,
        handler=handler_value,
        model_version=request.version,
        runtime=request.runtime,
        **manifest_files,  # type: ignore[arg-type]
    )
    return [(source, name) for name, source in unique.items()], manifest


class _Contents:
    """The files being written, hashed on the way (for the signature), then the members the archiver makes."""

    def __init__(self, entries: list[tuple[Path, str]], manifest: Manifest, progress: ProgressCallback | None) -> None:
        self.entries = entries
        self.progress = progress
        # rendered once: the bytes written are the bytes hashed (the manifest carries the time it was made)
        self.manifest = manifest.to_json().encode()
        self.digests: dict[str, str] = {MANIFEST_PATH: hashlib.sha256(self.manifest).hexdigest()}

    def copy(self, src_path: Path, name: str, dest: object) -> int:
        digest = hashlib.sha256()
        size = 0
        with open(src_path, "rb") as src:
            while chunk := src.read(_CHUNK):
                dest.write(chunk)  # type: ignore[attr-defined]
                digest.update(chunk)
                size += len(chunk)
                if self.progress:
                    self.progress(len(chunk))
        self.digests[name] = digest.hexdigest()
        return size

    def generated(self, sign_key: SigningKey | None) -> list[tuple[str, bytes]]:
        """MANIFEST.json, then SIGNATURE.json over every file (called once the files are written and hashed)."""
        members = [(MANIFEST_PATH, self.manifest)]
        if sign_key is not None:
            members.append((SIGNATURE_PATH, signature_document(self.digests, sign_key)))
        return members


def _write_zip(target: Path, contents: _Contents, sign_key: SigningKey | None, compression: int) -> None:
    with zipfile.ZipFile(target, "w", compression=compression) as archive:
        for source, name in contents.entries:
            info = zipfile.ZipInfo.from_file(source, arcname=name)
            info.compress_type = compression
            with archive.open(info, "w", force_zip64=source.stat().st_size > (1 << 31)) as dest:
                contents.copy(source, name, dest)
        for name, data in contents.generated(sign_key):
            archive.writestr(name, data)


class _HashingReader(io.RawIOBase):
    """A file read by tarfile, hashed and counted as it goes."""

    def __init__(self, path: Path, name: str, contents: _Contents) -> None:
        self.src = open(path, "rb")  # noqa: SIM115 - closed in close()
        self.digest = hashlib.sha256()
        self.name_in_archive = name
        self.contents = contents

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        chunk = self.src.read(size)
        self.digest.update(chunk)
        if chunk and self.contents.progress:
            self.contents.progress(len(chunk))
        return chunk

    def close(self) -> None:
        self.src.close()
        self.contents.digests[self.name_in_archive] = self.digest.hexdigest()
        super().close()


def _write_tgz(target: Path, contents: _Contents, sign_key: SigningKey | None, top: str) -> None:
    with tarfile.open(target, "w:gz") as archive:
        for source, name in contents.entries:
            info = archive.gettarinfo(str(source), arcname=f"{top}/{name}")
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            with _HashingReader(source, name, contents) as src:
                archive.addfile(info, src)
        for name, data in contents.generated(sign_key):
            info = tarfile.TarInfo(f"{top}/{name}")
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))


def _write_dir(target: Path, contents: _Contents, sign_key: SigningKey | None) -> None:
    target.mkdir()
    for source, name in contents.entries:
        dest = target / name
        dest.parent.mkdir(parents=True, exist_ok=True)
        with open(dest, "wb") as out:
            contents.copy(source, name, out)
    (target / "MAR-INF").mkdir(exist_ok=True)
    for name, data in contents.generated(sign_key):
        (target / name).write_bytes(data)


def total_input_bytes(request: PackRequest) -> int:
    entries, _ = collect_entries(request)
    return sum(source.stat().st_size for source, _ in entries)


def pack_archive(request: PackRequest, progress: ProgressCallback | None = None) -> Path:
    """Write the archive and return its path. Nothing partial is left behind on error or interrupt."""
    entries, manifest = collect_entries(request)
    export_dir = request.export_path
    if not export_dir.is_dir():
        raise ArchiverUsageError(f"export path is not a directory: {export_dir}")
    final = archive_path_for(request)
    if final.exists() and not request.force:
        raise ArchiverUsageError(f"{final} already exists; use -f/--force to overwrite it")
    if final.exists() and final.is_dir() != (request.archive_format == "no-archive"):
        raise ArchiverUsageError(f"{final} exists and is of another kind; remove it first")
    # the key is read before anything is written: a bad key leaves nothing behind
    sign_key = SigningKey.load(request.sign_key) if request.sign_key is not None else None
    contents = _Contents(entries, manifest, progress)
    fmt = request.archive_format
    if fmt == "no-archive":
        staging = Path(tempfile.mkdtemp(prefix=f".{request.model_name}.", dir=export_dir))
        temp_target = staging / request.model_name
    else:
        fd, temp_name = tempfile.mkstemp(prefix=f".{request.model_name}.", suffix=".partial", dir=export_dir)
        os.close(fd)
        staging = temp_target = Path(temp_name)
    try:
        if fmt in ("default", "zip-store"):
            compression = zipfile.ZIP_DEFLATED if fmt == "default" else zipfile.ZIP_STORED
            _write_zip(temp_target, contents, sign_key, compression)
        elif fmt == "tgz":
            _write_tgz(temp_target, contents, sign_key, request.model_name)
        else:
            _write_dir(temp_target, contents, sign_key)
        if fmt == "no-archive":
            if final.exists():
                shutil.rmtree(final)
            os.replace(temp_target, final)
        else:
            os.chmod(temp_target, 0o644 & ~_umask())
            os.replace(temp_target, final)
    finally:
        if staging.is_dir():
            shutil.rmtree(staging, ignore_errors=True)
        elif staging.exists():
            staging.unlink()
    return final


def _umask() -> int:
    current = os.umask(0)
    os.umask(current)
    return current

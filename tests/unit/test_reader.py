"""Safe reading: every rejection of API.md section 8 with a crafted archive, named in the error."""

from __future__ import annotations

import io
import json
import os
import stat
import tarfile
import zipfile
from pathlib import Path

import pytest

from modelserve.archive.errors import ArchiveError, ArchiveLimitError, ManifestError, UnsafeEntryError
from modelserve.archive.reader import ArchiveLimits, extract_archive

MANIFEST = json.dumps({"runtime": "python", "model": {"modelName": "m", "handler": "h.py", "modelVersion": "1.0"}})


def make_zip(path: Path, entries: list[tuple[str, bytes]], manifest: str | None = MANIFEST) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in entries:
            archive.writestr(name, data)
        if manifest is not None:
            archive.writestr("MAR-INF/MANIFEST.json", manifest)
    return path


def make_tar(path: Path, members: list[tarfile.TarInfo], payloads: dict[str, bytes] | None = None) -> Path:
    payloads = payloads or {}
    with tarfile.open(path, "w:gz", format=tarfile.PAX_FORMAT) as archive:
        for member in members:
            data = payloads.get(member.name)
            archive.addfile(member, io.BytesIO(data) if data is not None else None)
    return path


def file_member(name: str, data: bytes) -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    return info, data


def assert_nothing_left(parent: Path) -> None:
    assert list(parent.iterdir()) == [], "a failed extraction must leave no staging directory behind"


@pytest.fixture
def staging(tmp_path: Path) -> Path:
    path = tmp_path / "staging"
    path.mkdir()
    return path


def test_extracts_valid_zip_into_fresh_directory(tmp_path: Path, staging: Path) -> None:
    source = make_zip(tmp_path / "m.mar", [("h.py", b"x = 1\n"), ("sub/data.txt", b"d")])
    extracted = extract_archive(source, staging)
    assert extracted.root.parent == staging
    assert (extracted.root / "h.py").read_bytes() == b"x = 1\n"
    assert (extracted.root / "sub/data.txt").read_bytes() == b"d"
    assert extracted.manifest.model_name == "m"
    extracted.cleanup()
    assert_nothing_left(staging)


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("../evil.py", "'..'"),
        ("a/../../evil.py", "'..'"),
        ("/etc/evil", "absolute"),
        ("C:/evil", "absolute"),
        ("dir\\evil.py", "backslash"),
    ],
)
def test_zip_unsafe_names_are_rejected_and_named(tmp_path: Path, staging: Path, name: str, reason: str) -> None:
    source = make_zip(tmp_path / "bad.mar", [("h.py", b""), (name, b"evil")])
    with pytest.raises(UnsafeEntryError, match=reason) as info:
        extract_archive(source, staging)
    assert info.value.entry == name
    assert_nothing_left(staging)
    assert not (tmp_path / "evil.py").exists()


def test_zip_nul_in_name_is_rejected(tmp_path: Path, staging: Path) -> None:
    source = make_zip(tmp_path / "bad.mar", [("h.py", b""), ("aQb.py", b"x")])
    source.write_bytes(source.read_bytes().replace(b"aQb.py", b"a\x00b.py"))
    with pytest.raises(UnsafeEntryError, match="NUL") as info:
        extract_archive(source, staging)
    assert info.value.entry == "a\x00b.py"
    assert_nothing_left(staging)


def test_zip_duplicate_names_are_rejected(tmp_path: Path, staging: Path) -> None:
    with pytest.warns(UserWarning, match="Duplicate name"):
        source = make_zip(tmp_path / "bad.mar", [("h.py", b"a"), ("h.py", b"b")])
    with pytest.raises(UnsafeEntryError, match="duplicate") as info:
        extract_archive(source, staging)
    assert info.value.entry == "h.py"
    assert_nothing_left(staging)


def test_zip_symlink_entry_is_rejected(tmp_path: Path, staging: Path) -> None:
    source = tmp_path / "bad.mar"
    with zipfile.ZipFile(source, "w") as archive:
        archive.writestr("h.py", b"")
        link = zipfile.ZipInfo("link.py")
        link.external_attr = (stat.S_IFLNK | 0o777) << 16
        archive.writestr(link, "/etc/passwd")
        archive.writestr("MAR-INF/MANIFEST.json", MANIFEST)
    with pytest.raises(UnsafeEntryError, match="symbolic link") as info:
        extract_archive(source, staging)
    assert info.value.entry == "link.py"
    assert_nothing_left(staging)


def test_zip_bomb_by_ratio_is_rejected(tmp_path: Path, staging: Path) -> None:
    source = make_zip(tmp_path / "bomb.mar", [("h.py", b""), ("zeros.bin", bytes(50 << 20))])
    with pytest.raises(ArchiveLimitError, match=r"zeros\.bin.*expands"):
        extract_archive(source, staging)
    assert_nothing_left(staging)


def test_zip_with_lying_size_header_fails_cleanly(tmp_path: Path, staging: Path) -> None:
    source = make_zip(tmp_path / "bomb.mar", [("h.py", b""), ("zeros.bin", bytes(8 << 20))])
    # declare 100 bytes where the stream holds 8 MiB: reading stops at the declared size and the CRC fails
    raw = source.read_bytes().replace((8 << 20).to_bytes(4, "little"), (100).to_bytes(4, "little"))
    source.write_bytes(raw)
    with pytest.raises(ArchiveError, match=r"zeros\.bin"):
        extract_archive(source, staging)
    assert_nothing_left(staging)


def test_zip_bomb_by_count_is_rejected(tmp_path: Path, staging: Path) -> None:
    source = make_zip(tmp_path / "many.mar", [("h.py", b"")] + [(f"f{i}", b"") for i in range(60)])
    with pytest.raises(ArchiveLimitError, match="more than 50 entries"):
        extract_archive(source, staging, ArchiveLimits(max_entries=50))
    assert_nothing_left(staging)


def test_total_size_limit_is_enforced(tmp_path: Path, staging: Path) -> None:
    source = make_zip(tmp_path / "big.mar", [("h.py", b""), ("a", os.urandom(40_000)), ("b", os.urandom(40_000))])
    with pytest.raises(ArchiveLimitError, match=r"over the limit|expands past"):
        extract_archive(source, staging, ArchiveLimits(max_total_bytes=60_000))
    assert_nothing_left(staging)


@pytest.mark.parametrize(
    ("kind", "reason"),
    [(tarfile.SYMTYPE, "link"), (tarfile.LNKTYPE, "link"), (tarfile.CHRTYPE, "device"), (tarfile.FIFOTYPE, "FIFO")],
)
def test_tar_special_entries_are_rejected(tmp_path: Path, staging: Path, kind: bytes, reason: str) -> None:
    handler, handler_data = file_member("h.py", b"")
    manifest, manifest_data = file_member("MAR-INF/MANIFEST.json", MANIFEST.encode())
    special = tarfile.TarInfo("special")
    special.type = kind
    special.linkname = "/etc/passwd"
    source = make_tar(
        tmp_path / "bad.tar.gz",
        [handler, special, manifest],
        {"h.py": handler_data, "MAR-INF/MANIFEST.json": manifest_data},
    )
    with pytest.raises(UnsafeEntryError, match=reason) as info:
        extract_archive(source, staging)
    assert info.value.entry == "special"
    assert_nothing_left(staging)


# ustar names end at the first NUL by format; a NUL can only hide inside a pax (long) name
@pytest.mark.parametrize("name", ["../evil.py", "/abs/evil.py", "a\\b.py", "d" * 120 + "x\x00.py"])
def test_tar_unsafe_names_are_rejected(tmp_path: Path, staging: Path, name: str) -> None:
    member, data = file_member(name, b"evil")
    source = make_tar(tmp_path / "bad.tar.gz", [member], {name: data})
    with pytest.raises(UnsafeEntryError) as info:
        extract_archive(source, staging)
    assert info.value.entry == name
    assert_nothing_left(staging)


def test_tar_duplicates_are_rejected(tmp_path: Path, staging: Path) -> None:
    first, data = file_member("h.py", b"a")
    second, _ = file_member("h.py", b"a")
    source = make_tar(tmp_path / "dup.tar.gz", [first, second], {"h.py": data})
    with pytest.raises(UnsafeEntryError, match="duplicate"):
        extract_archive(source, staging)


def test_tar_bomb_by_stream_ratio_is_rejected(tmp_path: Path, staging: Path) -> None:
    member, data = file_member("zeros.bin", bytes(30 << 20))
    source = make_tar(tmp_path / "bomb.tar.gz", [member], {"zeros.bin": data})
    with pytest.raises(ArchiveLimitError, match="expands"):
        extract_archive(source, staging)
    assert_nothing_left(staging)


def test_torchserve_tgz_layout_with_top_directory_is_read(tmp_path: Path, staging: Path) -> None:
    handler, handler_data = file_member("m/h.py", b"x = 1\n")
    manifest, manifest_data = file_member("m/MAR-INF/MANIFEST.json", MANIFEST.encode())
    source = make_tar(
        tmp_path / "m.tar.gz", [handler, manifest], {"m/h.py": handler_data, "m/MAR-INF/MANIFEST.json": manifest_data}
    )
    extracted = extract_archive(source, staging)
    assert (extracted.root / "h.py").read_text() == "x = 1\n"


def test_missing_manifest_is_rejected(tmp_path: Path, staging: Path) -> None:
    source = make_zip(tmp_path / "m.mar", [("h.py", b"")], manifest=None)
    with pytest.raises(ManifestError, match=r"missing MAR-INF/MANIFEST\.json"):
        extract_archive(source, staging)
    assert_nothing_left(staging)


@pytest.mark.parametrize(
    ("model", "field"),
    [
        ({"modelName": "m"}, "model.handler"),
        ({"handler": "h.py"}, "model.modelName"),
        ({"modelName": "m", "handler": "absent.py"}, "model.handler"),
        ({"modelName": "m", "handler": "h.py", "serializedFile": "w.pth"}, "model.serializedFile"),
        ({"modelName": "m", "handler": "h.py", "modelFile": "net.py"}, "model.modelFile"),
        ({"modelName": "m", "handler": "h.py", "configFile": "c.yaml"}, "model.configFile"),
        ({"modelName": "m", "handler": "no_such_builtin"}, "model.handler"),
    ],
)
def test_manifest_missing_fields_or_files_are_named(
    tmp_path: Path, staging: Path, model: dict[str, str], field: str
) -> None:
    source = make_zip(tmp_path / "m.mar", [("h.py", b"")], manifest=json.dumps({"model": model}))
    with pytest.raises(ManifestError, match=field.replace(".", r"\.")):
        extract_archive(source, staging)
    assert_nothing_left(staging)


def test_directory_archive_is_copied_and_symlinks_refused(tmp_path: Path, staging: Path) -> None:
    model_dir = tmp_path / "m"
    (model_dir / "MAR-INF").mkdir(parents=True)
    (model_dir / "MAR-INF/MANIFEST.json").write_text(MANIFEST)
    (model_dir / "h.py").write_text("x = 1\n")
    extracted = extract_archive(model_dir, staging)
    assert (extracted.root / "h.py").read_text() == "x = 1\n"
    assert extracted.root != model_dir
    (model_dir / "link").symlink_to("/etc/passwd")
    with pytest.raises(UnsafeEntryError, match="symbolic link"):
        extract_archive(model_dir, staging)


def test_not_an_archive_is_a_typed_error(tmp_path: Path, staging: Path) -> None:
    source = tmp_path / "junk.mar"
    source.write_bytes(b"this is not an archive")
    with pytest.raises(ArchiveError, match="neither a zip"):
        extract_archive(source, staging)
    truncated = make_zip(tmp_path / "t.mar", [("h.py", os.urandom(5000))])
    truncated.write_bytes(truncated.read_bytes()[:3000])
    with pytest.raises(ArchiveError):
        extract_archive(truncated, staging)
    assert_nothing_left(staging)

"""The archive reader under hypothesis: any bytes, any mutation of a valid archive, only our own typed errors."""

from __future__ import annotations

import contextlib
import io
import json
import tempfile
import zipfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from modelserve.archive.errors import ArchiveError
from modelserve.archive.reader import ArchiveLimits, extract_archive

LIMITS = ArchiveLimits(max_total_bytes=1 << 20, max_entries=50)


def valid_archive() -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("h.py", "x = 1\n" * 50)
        archive.writestr("MAR-INF/MANIFEST.json", json.dumps({"model": {"modelName": "m", "handler": "h.py"}}))
    return buffer.getvalue()


VALID = valid_archive()


def try_extract(data: bytes, suffix: str) -> None:
    with tempfile.TemporaryDirectory() as work:
        source = Path(work) / f"fuzz{suffix}"
        source.write_bytes(data)
        staging = Path(work) / "staging"
        staging.mkdir()
        with contextlib.suppress(ArchiveError):
            extract_archive(source, staging, LIMITS).cleanup()
        assert list(staging.iterdir()) == [], "success is cleaned up, failure leaves nothing"
        assert sorted(p.name for p in Path(work).iterdir()) == sorted([source.name, "staging"])


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=2048), st.sampled_from([".mar", ".tar.gz", ".zip"]))
def test_random_bytes_raise_only_archive_errors(data: bytes, suffix: str) -> None:
    try_extract(data, suffix)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(st.integers(0, len(VALID) - 1), st.integers(0, 255)), min_size=1, max_size=8))
def test_mutated_archives_raise_only_archive_errors(flips: list[tuple[int, int]]) -> None:
    data = bytearray(VALID)
    for offset, value in flips:
        data[offset] = value
    try_extract(bytes(data), ".mar")


def valid_tgz() -> bytes:
    import tarfile

    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        for name, data in (("m/h.py", b"x = 1\n" * 50), ("m/MAR-INF/MANIFEST.json", VALID_MANIFEST)):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


VALID_MANIFEST = json.dumps({"model": {"modelName": "m", "handler": "h.py"}}).encode()
VALID_TGZ = valid_tgz()


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(st.integers(0, len(VALID_TGZ) - 1), st.integers(0, 255)), min_size=1, max_size=8))
def test_mutated_tar_archives_raise_only_archive_errors(flips: list[tuple[int, int]]) -> None:
    data = bytearray(VALID_TGZ)
    for offset, value in flips:
        data[offset] = value
    try_extract(bytes(data), ".tar.gz")

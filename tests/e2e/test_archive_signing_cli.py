"""``modelserve-archive --sign-key`` and ``--verify`` as a user types them, with keys made by ssh-keygen and openssl."""

from __future__ import annotations

import subprocess
import zipfile
from pathlib import Path

import pytest

from tests.support.paths import script
from tests.support.signing import rewrite_zip


def run(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=60, check=False)


def archive(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return run(script("modelserve-archive"), *args, cwd=cwd)


@pytest.fixture
def work(tmp_path: Path) -> Path:
    (tmp_path / "handler.py").write_text("def handle(data, context):\n    return data\n")
    (tmp_path / "weights.bin").write_bytes(b"\1" * 1000)
    # the tools users have: an OpenSSH key pair and an OpenSSL PEM key pair, both unencrypted
    assert run("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "ci", "-f", "ssh_key", cwd=tmp_path).returncode == 0
    assert run("openssl", "genpkey", "-algorithm", "ed25519", "-out", "pem_key", cwd=tmp_path).returncode == 0
    assert run("openssl", "pkey", "-in", "pem_key", "-pubout", "-out", "pem_key.pub", cwd=tmp_path).returncode == 0
    return tmp_path


def pack(work: Path, key: str, *extra: str) -> subprocess.CompletedProcess[str]:
    return archive("--model-name", "m", "--handler", "handler.py", "--serialized-file", "weights.bin",
                   "--sign-key", key, "-f", *extra, cwd=work)  # fmt: skip


@pytest.mark.parametrize("key", ["ssh_key", "pem_key"])
def test_signed_archive_verifies_with_its_public_key(work: Path, key: str) -> None:
    packed = pack(work, key)
    assert packed.returncode == 0, packed.stderr
    with zipfile.ZipFile(work / "m.mar") as mar:
        assert "MAR-INF/SIGNATURE.json" in mar.namelist()
    verified = archive("--verify", "m.mar", "--trusted-key", f"{key}.pub", cwd=work)
    assert verified.returncode == 0, verified.stderr
    assert "signature OK" in verified.stdout and "3 files" in verified.stdout


def test_fingerprint_is_the_one_ssh_keygen_prints(work: Path) -> None:
    assert pack(work, "ssh_key").returncode == 0
    expected = run("ssh-keygen", "-lf", "ssh_key.pub", cwd=work).stdout.split()[1]
    verified = archive("--verify", "m.mar", "--trusted-key", "ssh_key.pub", cwd=work)
    assert f"key {expected}," in verified.stdout


@pytest.mark.parametrize("archive_format", ["tgz", "no-archive"])
def test_other_formats_are_signed_and_verified(work: Path, archive_format: str) -> None:
    assert pack(work, "ssh_key", "--archive-format", archive_format).returncode == 0
    target = "m.tar.gz" if archive_format == "tgz" else "m"
    verified = archive("--verify", target, "--trusted-key", "ssh_key.pub", cwd=work)
    assert verified.returncode == 0, verified.stderr


def test_verify_fails_with_the_reason(work: Path) -> None:
    assert pack(work, "ssh_key").returncode == 0
    wrong = archive("--verify", "m.mar", "--trusted-key", "pem_key.pub", cwd=work)
    assert wrong.returncode == 1 and "signed by an unknown key SHA256:" in wrong.stderr
    either = archive("--verify", "m.mar", "--trusted-key", "pem_key.pub", "--trusted-key", "ssh_key.pub", cwd=work)
    assert either.returncode == 0, either.stderr
    rewrite_zip(work / "m.mar", {"weights.bin": b"\2" * 1000})
    altered = archive("--verify", "m.mar", "--trusted-key", "ssh_key.pub", cwd=work)
    assert altered.returncode == 1 and "'weights.bin' changed" in altered.stderr
    assert len(altered.stderr.strip().splitlines()) == 1 and "Traceback" not in altered.stderr


def test_unsigned_archive_fails_verification(work: Path) -> None:
    packed = archive("--model-name", "m", "--handler", "handler.py", cwd=work)
    assert packed.returncode == 0, packed.stderr
    result = archive("--verify", "m.mar", "--trusted-key", "ssh_key.pub", cwd=work)
    assert result.returncode == 1 and "archive is not signed" in result.stderr


def test_encrypted_key_is_refused_and_nothing_written(work: Path) -> None:
    made = run("ssh-keygen", "-q", "-t", "ed25519", "-N", "secret-pass", "-f", "locked", cwd=work)
    assert made.returncode == 0
    result = pack(work, "locked")
    assert result.returncode == 1 and "locked" in result.stderr
    assert "Traceback" not in result.stderr and not (work / "m.mar").exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--verify", "m.mar"], "--verify needs at least one --trusted-key"),
        (["--model-name", "m", "--handler", "handler.py", "--trusted-key", "ssh_key.pub"], "goes with --verify"),
        (["--verify", "missing.mar", "--trusted-key", "ssh_key.pub"], "not found"),
        (["--verify", "handler.py", "--trusted-key", "ssh_key"], "is a private key"),
    ],
)
def test_flag_mistakes_give_one_line(work: Path, args: list[str], message: str) -> None:
    result = archive(*args, cwd=work)
    assert result.returncode != 0
    assert len(result.stderr.strip().splitlines()) == 1 and message in result.stderr, result.stderr

"""Signed archives: sign and verify in every format and key form; every alteration, key and policy case refused."""

from __future__ import annotations

import base64
import json
import re
import shutil
import tarfile
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from modelserve.archive.errors import ArchiverUsageError
from modelserve.archive.packer import PackRequest, pack_archive
from modelserve.archive.reader import ArchiveLimits
from modelserve.archive.signing import (
    SIGNATURE_PATH,
    SignatureError,
    SignaturePolicy,
    SigningKey,
    SigningKeyError,
    extract_verified,
    load_public_key,
    verify_archive_file,
)
from tests.support.signing import KeyPair, read_member, rewrite_zip, write_keypair


@pytest.fixture
def keys(tmp_path: Path) -> KeyPair:
    return write_keypair(tmp_path / "keys", "signer")


@pytest.fixture
def sources(tmp_path: Path) -> Path:
    src = tmp_path / "src"
    src.mkdir()
    (src / "handler.py").write_text("def handle(data, context):\n    return data\n")
    (src / "weights.bin").write_bytes(bytes(range(256)) * 10)
    (src / "extra").mkdir()
    (src / "extra" / "labels.json").write_text('{"0": "zero"}')
    return src


def pack(sources: Path, out: Path, key: Path | None, archive_format: str = "default") -> Path:
    out.mkdir(parents=True, exist_ok=True)
    request = PackRequest(model_name="signed", handler=str(sources / "handler.py"),
                          serialized_file=sources / "weights.bin", extra_files=[sources / "extra"],
                          archive_format=archive_format, export_path=out, force=True, sign_key=key)  # fmt: skip
    return pack_archive(request)


def policy(*keys: KeyPair, required: bool = True) -> SignaturePolicy:
    return SignaturePolicy.from_key_files([str(k.public) for k in keys], required)


@pytest.mark.parametrize("archive_format", ["default", "zip-store", "tgz", "no-archive"])
def test_signed_archive_verifies_in_every_format(
    sources: Path, keys: KeyPair, tmp_path: Path, archive_format: str
) -> None:
    path = pack(sources, tmp_path / "out", keys.private, archive_format)
    result = verify_archive_file(path, policy(keys))
    assert result.trusted and result.fingerprint == load_public_key(keys.public).fingerprint
    assert result.files == 4  # handler, weights, labels, manifest


@pytest.mark.parametrize(("private_format", "public_format"), [("openssh", "pem"), ("pem", "openssh"), ("pem", "pem")])
def test_every_key_form_signs_and_verifies(
    sources: Path, tmp_path: Path, private_format: str, public_format: str
) -> None:
    pair = write_keypair(tmp_path / "keys", "k", private_format, public_format)
    assert verify_archive_file(pack(sources, tmp_path / "out", pair.private), policy(pair)).trusted


def test_signature_lists_every_file_with_its_digest(sources: Path, keys: KeyPair, tmp_path: Path) -> None:
    document = json.loads(read_member(pack(sources, tmp_path / "out", keys.private), SIGNATURE_PATH))
    paths = [entry["path"] for entry in document["files"]]
    assert paths == sorted(["handler.py", "weights.bin", "labels.json", "MAR-INF/MANIFEST.json"])
    assert document["key"].startswith("SHA256:") and document["algorithm"] == "ed25519"


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({"weights.bin": b"poisoned"}, "'weights.bin' changed"),
        ({"handler.py": b"import os\nos.system('id')\n"}, "'handler.py' changed"),
        ({"evil.py": b"print('hi')"}, "'evil.py' was added"),
        ({"labels.json": None}, "'labels.json' was removed"),
        ({"MAR-INF/extra.txt": b"x"}, "'MAR-INF/extra.txt' was added"),
    ],
)
def test_any_altered_file_is_refused(
    sources: Path, keys: KeyPair, tmp_path: Path, changes: dict[str, bytes | None], reason: str
) -> None:
    path = pack(sources, tmp_path / "out", keys.private)
    rewrite_zip(path, changes)
    with pytest.raises(SignatureError, match=re.escape(f"altered after signing: {reason}")):
        verify_archive_file(path, policy(keys))


def test_changed_manifest_is_refused(sources: Path, keys: KeyPair, tmp_path: Path) -> None:
    path = pack(sources, tmp_path / "out", keys.private)
    manifest = json.loads(read_member(path, "MAR-INF/MANIFEST.json"))
    manifest["model"]["modelVersion"] = "2.0"
    rewrite_zip(path, {"MAR-INF/MANIFEST.json": json.dumps(manifest).encode()})
    with pytest.raises(SignatureError, match=re.escape("'MAR-INF/MANIFEST.json' changed")):
        verify_archive_file(path, policy(keys))


def test_signature_file_rewritten_to_match_a_change_is_a_bad_signature(
    sources: Path, keys: KeyPair, tmp_path: Path
) -> None:
    path = pack(sources, tmp_path / "out", keys.private)
    document = json.loads(read_member(path, SIGNATURE_PATH))
    # the attacker updates the digest list too: the signature no longer covers it
    document["files"] = [e for e in document["files"] if e["path"] != "labels.json"]
    rewrite_zip(path, {SIGNATURE_PATH: json.dumps(document).encode(), "labels.json": None})
    with pytest.raises(SignatureError, match="bad signature"):
        verify_archive_file(path, policy(keys))


def test_flipped_signature_byte_is_refused(sources: Path, keys: KeyPair, tmp_path: Path) -> None:
    path = pack(sources, tmp_path / "out", keys.private)
    document = json.loads(read_member(path, SIGNATURE_PATH))
    raw = bytearray(base64.b64decode(document["signature"]))
    raw[0] ^= 1
    document["signature"] = base64.b64encode(bytes(raw)).decode()
    rewrite_zip(path, {SIGNATURE_PATH: json.dumps(document).encode()})
    with pytest.raises(SignatureError, match="bad signature"):
        verify_archive_file(path, policy(keys))


def test_altered_tgz_and_directory_archives_are_refused(sources: Path, keys: KeyPair, tmp_path: Path) -> None:
    directory = pack(sources, tmp_path / "dir", keys.private, "no-archive")
    (directory / "weights.bin").write_bytes(b"changed")
    with pytest.raises(SignatureError, match=re.escape("'weights.bin' changed")):
        verify_archive_file(directory, policy(keys))
    tgz = pack(sources, tmp_path / "tgz", keys.private, "tgz")
    unpacked = tmp_path / "unpacked"
    with tarfile.open(tgz) as archive:
        archive.extractall(unpacked, filter="data")
    (unpacked / "signed" / "added.py").write_text("x = 1\n")
    with tarfile.open(tgz, "w:gz") as archive:
        archive.add(unpacked / "signed", arcname="signed")
    with pytest.raises(SignatureError, match=re.escape("'added.py' was added")):
        verify_archive_file(tgz, policy(keys))


def test_unknown_key_is_refused_when_signatures_are_required(sources: Path, keys: KeyPair, tmp_path: Path) -> None:
    stranger = write_keypair(tmp_path / "keys", "stranger")
    path = pack(sources, tmp_path / "out", stranger.private)
    with pytest.raises(SignatureError, match="signed by an unknown key SHA256:"):
        verify_archive_file(path, policy(keys))


def test_unsigned_archive_is_refused_only_when_required(sources: Path, keys: KeyPair, tmp_path: Path) -> None:
    path = pack(sources, tmp_path / "out", None)
    with pytest.raises(SignatureError, match="archive is not signed"):
        verify_archive_file(path, policy(keys))
    result = verify_archive_file(path, policy(keys, required=False))
    assert result.fingerprint is None and not result.trusted


def test_optional_policy_still_refuses_a_bad_signature_of_a_trusted_key(
    sources: Path, keys: KeyPair, tmp_path: Path
) -> None:
    path = pack(sources, tmp_path / "out", keys.private)
    assert verify_archive_file(path, policy(keys, required=False)).trusted
    rewrite_zip(path, {"weights.bin": b"poisoned"})
    with pytest.raises(SignatureError, match=re.escape("'weights.bin' changed")):
        verify_archive_file(path, policy(keys, required=False))


def test_optional_policy_accepts_an_untrusted_signer_but_checks_its_digests(
    sources: Path, keys: KeyPair, tmp_path: Path
) -> None:
    stranger = write_keypair(tmp_path / "keys", "stranger")
    path = pack(sources, tmp_path / "out", stranger.private)
    result = verify_archive_file(path, policy(keys, required=False))
    assert not result.trusted and result.fingerprint is not None
    rewrite_zip(path, {"weights.bin": b"poisoned"})
    with pytest.raises(SignatureError, match=re.escape("'weights.bin' changed")):
        verify_archive_file(path, policy(keys, required=False))


def test_extract_verified_leaves_nothing_behind_when_refused(sources: Path, keys: KeyPair, tmp_path: Path) -> None:
    path = pack(sources, tmp_path / "out", None)
    work = tmp_path / "work"
    work.mkdir()

    class Settings:
        trusted_archive_keys = [str(keys.public)]
        require_signed_archives = True

    with pytest.raises(SignatureError):
        extract_verified(path, work, ArchiveLimits(), Settings())
    assert list(work.iterdir()) == []


def test_fingerprint_is_the_same_from_either_key_file(keys: KeyPair) -> None:
    assert SigningKey.load(keys.private).fingerprint == load_public_key(keys.public).fingerprint


def test_encrypted_private_key_is_refused_with_the_reason(tmp_path: Path) -> None:
    key = Ed25519PrivateKey.generate()
    path = tmp_path / "encrypted.key"
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                       serialization.BestAvailableEncryption(b"pw")))  # fmt: skip
    with pytest.raises(SigningKeyError, match="is encrypted"):
        SigningKey.load(path)


def test_non_ed25519_keys_are_refused(tmp_path: Path) -> None:
    key = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    private = tmp_path / "rsa.key"
    private.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                          serialization.NoEncryption()))  # fmt: skip
    public = tmp_path / "rsa.pub"
    public.write_bytes(
        key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    )
    with pytest.raises(SigningKeyError, match="not an Ed25519 key"):
        SigningKey.load(private)
    with pytest.raises(SigningKeyError, match="not an Ed25519 key"):
        load_public_key(public)


def test_private_key_given_as_trusted_key_is_refused(keys: KeyPair) -> None:
    with pytest.raises(SigningKeyError, match="is a private key"):
        load_public_key(keys.private)


def test_required_signatures_without_keys_is_a_key_error() -> None:
    with pytest.raises(SigningKeyError, match="needs at least one key"):
        SignaturePolicy.from_key_files([], required=True)


def test_a_file_named_like_the_signature_cannot_be_packed(sources: Path, keys: KeyPair, tmp_path: Path) -> None:
    extra = tmp_path / "tree"
    (extra / "MAR-INF").mkdir(parents=True)
    (extra / "MAR-INF" / "SIGNATURE.json").write_text("{}")
    request = PackRequest(model_name="m", handler=str(sources / "handler.py"), extra_files=[extra],
                          export_path=tmp_path, sign_key=keys.private)  # fmt: skip
    with pytest.raises(ArchiverUsageError, match="writes itself"):
        pack_archive(request)


def test_bad_sign_key_writes_no_archive(sources: Path, tmp_path: Path) -> None:
    bogus = tmp_path / "bogus.key"
    bogus.write_text("not a key\n")
    out = tmp_path / "out"
    with pytest.raises(SigningKeyError, match="neither an OpenSSH nor a PEM private key"):
        pack(sources, out, bogus)
    assert list(out.iterdir()) == []
    shutil.rmtree(out)

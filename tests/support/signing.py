"""Keys and tampering for the signed-archive tests: Ed25519 key files in every accepted form, zip members rewritten."""

from __future__ import annotations

import zipfile
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey


@dataclass(frozen=True)
class KeyPair:
    private: Path
    public: Path


def write_keypair(
    directory: Path, name: str, private_format: str = "openssh", public_format: str = "openssh"
) -> KeyPair:
    """A fresh Ed25519 key: private as ``openssh`` or ``pem`` (PKCS#8), public as ``openssh`` or ``pem``."""
    directory.mkdir(parents=True, exist_ok=True)
    key = Ed25519PrivateKey.generate()
    private_kind = (
        serialization.PrivateFormat.OpenSSH if private_format == "openssh" else serialization.PrivateFormat.PKCS8
    )
    private = directory / f"{name}.key"
    private.write_bytes(key.private_bytes(serialization.Encoding.PEM, private_kind, serialization.NoEncryption()))
    private.chmod(0o600)
    public = directory / f"{name}.pub"
    if public_format == "openssh":
        line = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
        public.write_bytes(line + b" test@modelserve\n")
    else:
        public.write_bytes(
            key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        )
    return KeyPair(private=private, public=public)


def rewrite_zip(path: Path, changes: dict[str, bytes | None]) -> None:
    """Rewrite the zip at ``path`` with members replaced (bytes), removed (None) or added (a new name)."""
    with zipfile.ZipFile(path) as source:
        members = {info.filename: source.read(info) for info in source.infolist()}
    for name, data in changes.items():
        if data is None:
            members.pop(name)
        else:
            members[name] = data
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as target:
        for name, data in members.items():
            target.writestr(name, data)


def read_member(path: Path, name: str) -> bytes:
    with zipfile.ZipFile(path) as archive:
        return archive.read(name)

"""Signed archives: a detached Ed25519 signature over every file's SHA-256, kept in ``MAR-INF/SIGNATURE.json``.

The signature covers a canonical JSON statement: the sorted list of every file of the archive (the manifest among
them, the signature file itself excepted) with its SHA-256, and the signing key's fingerprint. An archive verifies
when its signature is good for a trusted key and its files are exactly those listed, byte for byte: a file added,
removed or changed, or a changed manifest, is refused. The check runs on the extracted files, so ``.mar`` (zip),
``.tar.gz`` and directory archives are verified the same way, and before any handler code runs.

Keys are Ed25519, unencrypted: private keys in OpenSSH (``ssh-keygen -t ed25519 -N ''``) or PKCS#8 PEM form
(``openssl genpkey -algorithm ed25519``), public keys as an OpenSSH ``ssh-ed25519 ...`` line or a PEM public key.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Protocol

from modelserve.archive.errors import ArchiveError
from modelserve.archive.reader import ArchiveLimits, ExtractedArchive, extract_archive

log = logging.getLogger("modelserve.archive.signing")

SIGNATURE_PATH = "MAR-INF/SIGNATURE.json"
SIGNATURE_FORMAT = "modelserve-archive-signature/1"
ALGORITHM = "ed25519"
_MAX_SIGNATURE_BYTES = 8 << 20  # a list of 10,000 files is well under 2 MB
_CHUNK = 1 << 20


class SignatureError(ArchiveError):
    """An archive's signature is missing, unknown, malformed or does not match its files."""


class SigningKeyError(ArchiveError):
    """A key file that cannot be used: unreadable, encrypted, or not an Ed25519 key."""


@dataclass(frozen=True)
class TrustedKey:
    """A public key that archive signatures are checked against, known by its OpenSSH-style fingerprint."""

    fingerprint: str
    public_bytes: bytes
    source: str


@dataclass(frozen=True)
class SignaturePolicy:
    """What the server asks of archives: the trusted keys, and whether an unsigned archive is refused."""

    trusted: Mapping[str, TrustedKey] = field(default_factory=dict)
    required: bool = False

    @classmethod
    def from_key_files(cls, paths: Iterable[str], required: bool) -> SignaturePolicy:
        """Load ``trusted_archive_keys``; a bad key file or ``required`` without keys is a SigningKeyError."""
        keys = [load_public_key(Path(path)) for path in paths]
        if required and not keys:
            raise SigningKeyError("require_signed_archives=true needs at least one key in trusted_archive_keys")
        return cls(trusted={key.fingerprint: key for key in keys}, required=required)


@dataclass(frozen=True)
class Verification:
    """The outcome of a check that passed: the signer (None when unsigned and allowed) and how many files it covers."""

    fingerprint: str | None
    files: int
    trusted: bool


# ---- keys ---------------------------------------------------------------------------------------------------------
def _read_key_file(path: Path, what: str) -> bytes:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise SigningKeyError(f"cannot read {what} {path}: {exc.strerror or exc}") from None
    if len(data) > 64 << 10:
        raise SigningKeyError(f"{what} {path} is too large to be a key")
    return data


def fingerprint_of(public_bytes: bytes) -> str:
    """``SHA256:...`` as ``ssh-keygen -lf`` prints it for the same key."""
    blob = b"".join(len(part).to_bytes(4, "big") + part for part in (b"ssh-ed25519", public_bytes))
    return "SHA256:" + base64.b64encode(hashlib.sha256(blob).digest()).decode().rstrip("=")


def load_public_key(path: Path) -> TrustedKey:
    """An Ed25519 public key from an OpenSSH ``ssh-ed25519 AAAA... comment`` line or a PEM ``PUBLIC KEY``."""
    from cryptography.exceptions import UnsupportedAlgorithm
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    data = _read_key_file(path, "public key")
    text = data.strip()
    key: object
    try:
        if text.startswith(b"ssh-"):
            key = serialization.load_ssh_public_key(text.splitlines()[0])
        elif text.startswith(b"-----BEGIN PUBLIC KEY-----"):
            key = serialization.load_pem_public_key(text)
        elif b"PRIVATE KEY" in text:
            raise SigningKeyError(f"{path} is a private key: give the server and --trusted-key the public key only")
        else:
            raise SigningKeyError(f"{path} is neither an OpenSSH public key line nor a PEM public key")
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise SigningKeyError(f"cannot read public key {path}: {exc}") from None
    if not isinstance(key, Ed25519PublicKey):
        raise SigningKeyError(f"{path} is not an Ed25519 key ({type(key).__name__}); archives are signed with Ed25519")
    raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return TrustedKey(fingerprint=fingerprint_of(raw), public_bytes=raw, source=str(path))


@dataclass(frozen=True)
class SigningKey:
    """An unencrypted Ed25519 private key, read from an OpenSSH or PEM (PKCS#8) file."""

    private_bytes: bytes = field(repr=False)
    fingerprint: str

    @classmethod
    def load(cls, path: Path) -> SigningKey:
        from cryptography.exceptions import UnsupportedAlgorithm
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

        data = _read_key_file(path, "signing key")
        key: object
        try:
            if b"-----BEGIN OPENSSH PRIVATE KEY-----" in data:
                key = serialization.load_ssh_private_key(data, password=None)
            elif b"-----BEGIN" in data and b"PRIVATE KEY-----" in data:
                key = serialization.load_pem_private_key(data, password=None)
            else:
                raise SigningKeyError(f"{path} is neither an OpenSSH nor a PEM private key")
        except TypeError:
            raise SigningKeyError(
                f"{path} is encrypted: signing keys are read unencrypted (keep the file private, mode 0600)"
            ) from None
        except (ValueError, UnsupportedAlgorithm) as exc:
            raise SigningKeyError(f"cannot read signing key {path}: {exc}") from None
        if not isinstance(key, Ed25519PrivateKey):
            raise SigningKeyError(f"{path} is not an Ed25519 key ({type(key).__name__}); use ssh-keygen -t ed25519")
        raw = key.private_bytes(
            serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
        )
        public = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        return cls(private_bytes=raw, fingerprint=fingerprint_of(public))

    def sign(self, message: bytes) -> bytes:
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

        return Ed25519PrivateKey.from_private_bytes(self.private_bytes).sign(message)


# ---- the signed statement -----------------------------------------------------------------------------------------
def _statement(digests: Mapping[str, str], fingerprint: str) -> bytes:
    """The exact bytes that are signed: canonical JSON, so signer and verifier never disagree on formatting."""
    files = [{"path": path, "sha256": digests[path]} for path in sorted(digests)]
    body = {"format": SIGNATURE_FORMAT, "algorithm": ALGORITHM, "key": fingerprint, "files": files}
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode("ascii")


def signature_document(digests: Mapping[str, str], key: SigningKey) -> bytes:
    """``MAR-INF/SIGNATURE.json`` for files with these SHA-256 digests (archive path -> hex)."""
    if SIGNATURE_PATH in digests:
        raise SignatureError(f"{SIGNATURE_PATH} cannot itself be a signed file")
    signature = key.sign(_statement(digests, key.fingerprint))
    document = {
        "format": SIGNATURE_FORMAT,
        "algorithm": ALGORITHM,
        "key": key.fingerprint,
        "files": [{"path": path, "sha256": digests[path]} for path in sorted(digests)],
        "signature": base64.b64encode(signature).decode("ascii"),
    }
    return (json.dumps(document, indent=2) + "\n").encode("utf-8")


def file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as src:
        while chunk := src.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def tree_digests(root: Path) -> dict[str, str]:
    """Every regular file under ``root`` (the signature file excepted) -> its SHA-256."""
    digests: dict[str, str] = {}
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        dirnames.sort()
        for name in sorted(filenames):
            path = Path(dirpath) / name
            rel = path.relative_to(root).as_posix()
            if rel == SIGNATURE_PATH:
                continue
            if path.is_symlink() or not path.is_file():
                raise SignatureError(f"{rel!r} is not a regular file and cannot be verified")
            digests[rel] = file_digest(path)
    return digests


def _parse_document(path: Path) -> tuple[str, dict[str, str], bytes]:
    if path.stat().st_size > _MAX_SIGNATURE_BYTES:
        raise SignatureError(f"{SIGNATURE_PATH} is larger than {_MAX_SIGNATURE_BYTES} bytes")
    try:
        document = json.loads(path.read_bytes())
    except (UnicodeDecodeError, ValueError) as exc:
        raise SignatureError(f"{SIGNATURE_PATH} is not valid JSON: {exc}") from None
    if not isinstance(document, dict):
        raise SignatureError(f"{SIGNATURE_PATH} is not a JSON object")
    if document.get("format") != SIGNATURE_FORMAT or document.get("algorithm") != ALGORITHM:
        raise SignatureError(f"{SIGNATURE_PATH} is not a {SIGNATURE_FORMAT} {ALGORITHM} signature")
    key, files, signature = document.get("key"), document.get("files"), document.get("signature")
    if not isinstance(key, str) or not isinstance(signature, str) or not isinstance(files, list):
        raise SignatureError(f"{SIGNATURE_PATH} needs 'key' and 'signature' strings and a 'files' list")
    digests: dict[str, str] = {}
    for entry in files:
        if (
            not isinstance(entry, dict)
            or not isinstance(entry.get("path"), str)
            or not isinstance(entry.get("sha256"), str)
        ):
            raise SignatureError(f"{SIGNATURE_PATH}: every file entry needs 'path' and 'sha256' strings")
        if entry["path"] in digests:
            raise SignatureError(f"{SIGNATURE_PATH} lists {entry['path']!r} twice")
        digests[entry["path"]] = entry["sha256"]
    try:
        raw_signature = base64.b64decode(signature, validate=True)
    except ValueError:
        raise SignatureError(f"{SIGNATURE_PATH}: the signature is not base64") from None
    return key, digests, raw_signature


def _compare(signed: Mapping[str, str], actual: Mapping[str, str]) -> None:
    """Name the first difference: a file added, removed or changed since signing."""
    added = sorted(set(actual) - set(signed))
    if added:
        raise SignatureError(f"archive was altered after signing: {added[0]!r} was added")
    removed = sorted(set(signed) - set(actual))
    if removed:
        raise SignatureError(f"archive was altered after signing: {removed[0]!r} was removed")
    for path in sorted(signed):
        if signed[path] != actual[path]:
            raise SignatureError(f"archive was altered after signing: {path!r} changed")


def verify_tree(root: Path, policy: SignaturePolicy) -> Verification:
    """Check the extracted archive at ``root`` against ``policy``; raise SignatureError naming the reason.

    Unsigned: refused when signatures are required, else accepted. Signed by a trusted key: the signature must be
    good and the files exactly those signed. Signed by another key: refused when required; else the files are still
    checked against their digests (a damaged archive is refused) and a warning says the signer is not trusted.
    """
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    document = root / SIGNATURE_PATH
    if not document.is_file():
        if policy.required:
            raise SignatureError("archive is not signed, and require_signed_archives=true")
        return Verification(fingerprint=None, files=0, trusted=False)
    fingerprint, signed, raw_signature = _parse_document(document)
    key = policy.trusted.get(fingerprint)
    if key is None and policy.required:
        raise SignatureError(f"archive is signed by an unknown key {fingerprint} (not in trusted_archive_keys)")
    if key is not None:
        try:
            Ed25519PublicKey.from_public_bytes(key.public_bytes).verify(raw_signature, _statement(signed, fingerprint))
        except InvalidSignature:
            raise SignatureError(
                f"bad signature: {SIGNATURE_PATH} was altered or not made by key {fingerprint}"
            ) from None
    _compare(signed, tree_digests(root))
    if key is None:
        log.warning("archive is signed by key %s, which is not in trusted_archive_keys: signature not checked",
                    fingerprint)  # fmt: skip
    return Verification(fingerprint=fingerprint, files=len(signed), trusted=key is not None)


def verify_archive_file(source: Path, policy: SignaturePolicy) -> Verification:
    """Extract ``source`` safely into a temporary directory, verify it, and remove the directory again."""
    work = Path(tempfile.mkdtemp(prefix="modelserve-verify-"))
    try:
        extracted = extract_archive(source, work)
        return verify_tree(extracted.root, policy)
    finally:
        shutil.rmtree(work, ignore_errors=True)


class SignatureSettings(Protocol):
    """The two server settings this module reads (``ServerConfig`` has them)."""

    @property
    def trusted_archive_keys(self) -> list[str]: ...

    @property
    def require_signed_archives(self) -> bool: ...


@lru_cache(maxsize=8)
def _policy(paths: tuple[str, ...], required: bool) -> SignaturePolicy:
    # the key files are read once per server: changing the trusted keys takes a restart
    return SignaturePolicy.from_key_files(paths, required)


def extract_verified(
    source: Path, parent_dir: Path, limits: ArchiveLimits, settings: SignatureSettings
) -> ExtractedArchive:
    """Extract ``source`` safely, then check its signature against the server's policy before anything else reads
    it; on refusal the extracted files are removed again and a SignatureError names the reason."""
    policy = _policy(tuple(settings.trusted_archive_keys), settings.require_signed_archives)
    extracted = extract_archive(source, parent_dir, limits)
    try:
        verification = verify_tree(extracted.root, policy)
    except BaseException:
        extracted.cleanup()
        raise
    if verification.trusted:
        log.info("archive %s: signature of key %s verified over %d files", source.name, verification.fingerprint,
                 verification.files)  # fmt: skip
    return extracted

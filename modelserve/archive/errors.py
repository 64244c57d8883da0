"""The archive layer's error family. No HTTP here: the server maps these to status codes."""

from __future__ import annotations


class ArchiveError(Exception):
    """Base of every error raised while packing, reading or validating a model archive."""


class ArchiveNotFoundError(ArchiveError):
    """The archive (or a file named to the archiver) does not exist."""


class UnsafeEntryError(ArchiveError):
    """An entry would escape the extraction directory or is of a refused kind (link, device, ...)."""

    def __init__(self, entry: str, reason: str) -> None:
        super().__init__(f"unsafe archive entry {entry!r}: {reason}")
        self.entry = entry
        self.reason = reason


class ArchiveLimitError(ArchiveError):
    """The archive exceeds a size, entry-count or compression-ratio limit (zip bomb protection)."""


class ManifestError(ArchiveError):
    """MAR-INF/MANIFEST.json is missing, malformed, incomplete or names files that are absent."""


class ArchiverUsageError(ArchiveError):
    """A user mistake on the archiver's command line (bad name, existing archive, unknown format...)."""

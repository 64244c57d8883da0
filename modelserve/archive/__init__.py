"""Model archives: the manifest, packing, safe reading and extraction."""

from modelserve.archive.errors import (
    ArchiveError,
    ArchiveLimitError,
    ArchiveNotFoundError,
    ArchiverUsageError,
    ManifestError,
    UnsafeEntryError,
)
from modelserve.archive.manifest import MANIFEST_PATH, Manifest
from modelserve.archive.packer import PackRequest, pack_archive
from modelserve.archive.reader import ArchiveLimits, ExtractedArchive, extract_archive

__all__ = [
    "MANIFEST_PATH",
    "ArchiveError",
    "ArchiveLimitError",
    "ArchiveLimits",
    "ArchiveNotFoundError",
    "ArchiverUsageError",
    "ExtractedArchive",
    "Manifest",
    "ManifestError",
    "PackRequest",
    "UnsafeEntryError",
    "extract_archive",
    "pack_archive",
]

"""``modelserve-archive``: pack a model into an archive, with torch-model-archiver's flags and defaults."""

from __future__ import annotations

import argparse
import sys
import time
import typing
from pathlib import Path

from modelserve import package_version
from modelserve.archive.errors import ArchiveError
from modelserve.archive.packer import ARCHIVE_FORMATS, PackRequest, collect_entries, pack_archive
from modelserve.archive.signing import SignaturePolicy, verify_archive_file

# inputs smaller than this pack in a blink: no progress bar
PROGRESS_MIN_BYTES = 32 << 20


class ProgressBar:
    """A one-line progress bar on stderr, redrawn at most ten times a second."""

    def __init__(self, total: int, label: str) -> None:
        self.total = max(total, 1)
        self.done = 0
        self.label = label
        self.last_draw = 0.0

    def __call__(self, count: int) -> None:
        self.done += count
        now = time.monotonic()
        if now - self.last_draw >= 0.1 or self.done >= self.total:
            self.last_draw = now
            fraction = min(self.done / self.total, 1.0)
            filled = int(fraction * 30)
            sys.stderr.write(
                f"\r{self.label} [{'#' * filled}{'.' * (30 - filled)}] {fraction:6.1%} "
                f"{self.done / 1e6:,.1f}/{self.total / 1e6:,.1f} MB"
            )
            sys.stderr.flush()

    def finish(self) -> None:
        sys.stderr.write("\n")
        sys.stderr.flush()


class OneLineParser(argparse.ArgumentParser):
    """Usage mistakes print one line, not a usage block."""

    def error(self, message: str) -> typing.NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


class ModelVersionOrShowVersion(argparse.Action):
    """``-v/--version V`` is the model's version, as in torch-model-archiver; alone, it prints the tool's own."""

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: str | typing.Sequence[typing.Any] | None,
        option_string: str | None = None,
    ) -> None:
        if values is None:
            print(f"{parser.prog} {package_version()}")
            parser.exit(0)
        setattr(namespace, self.dest, values)


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog="modelserve-archive",
        description="Pack a model into a TorchServe-compatible archive (.mar, .tar.gz or a directory), "
        "optionally signed; or verify an archive's signature (--verify ARCHIVE --trusted-key KEY).",
    )
    parser.add_argument("--model-name", help="model name; also the archive's file name (required to pack)")
    parser.add_argument(
        "-v",
        "--version",
        nargs="?",
        default="1.0",
        action=ModelVersionOrShowVersion,
        help="model version (default: 1.0); alone, print modelserve-archive's own version",
    )
    parser.add_argument("--serialized-file", type=Path, help="weights: state_dict .pth/.pt, TorchScript, .onnx, ...")
    parser.add_argument("--model-file", type=Path, help="Python file defining the model class (eager mode)")
    parser.add_argument(
        "--handler", help="handler file, FILE.py:function, or a built-in name (e.g. image_classifier); required to pack"
    )
    parser.add_argument("--extra-files", default="", help="comma-separated files or directories to add")
    parser.add_argument("-r", "--requirements-file", type=Path, help="per-model pip requirements file")
    parser.add_argument("-c", "--config-file", type=Path, help="per-model model-config.yaml")
    parser.add_argument("--runtime", default="python", choices=["python", "python3"], help="runtime tag")
    parser.add_argument(
        "--archive-format",
        default="default",
        choices=list(ARCHIVE_FORMATS),
        help="default: .mar (zip, deflate); zip-store: .mar uncompressed; tgz: .tar.gz; no-archive: a directory",
    )
    parser.add_argument("--export-path", type=Path, default=Path(), help="output directory (default: current)")
    parser.add_argument("-f", "--force", action="store_true", help="overwrite an existing archive")
    parser.add_argument(
        "--sign-key",
        type=Path,
        help="sign the archive with this Ed25519 private key (OpenSSH or PEM, unencrypted): MAR-INF/SIGNATURE.json",
    )
    parser.add_argument(
        "--verify", type=Path, metavar="ARCHIVE", help="check ARCHIVE's signature against --trusted-key; pack nothing"
    )
    parser.add_argument(
        "--trusted-key",
        type=Path,
        action="append",
        default=[],
        metavar="KEY",
        help="a trusted Ed25519 public key (OpenSSH or PEM) for --verify; may be repeated",
    )
    return parser


def verify_main(args: argparse.Namespace) -> int:
    """``--verify``: exit 0 when the archive is signed by a trusted key and unaltered, else 1 with the reason."""
    try:
        policy = SignaturePolicy.from_key_files([str(key) for key in args.trusted_key], required=True)
        result = verify_archive_file(args.verify, policy)
    except ArchiveError as exc:
        print(f"modelserve-archive: error: {args.verify}: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"modelserve-archive: error: {args.verify}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    print(f"{args.verify}: signature OK, key {result.fingerprint}, {result.files} files")
    return 0


def request_from_args(args: argparse.Namespace) -> PackRequest:
    extras = [Path(item.strip()) for item in args.extra_files.split(",") if item.strip()]
    return PackRequest(
        model_name=args.model_name,
        handler=args.handler,
        version=args.version,
        serialized_file=args.serialized_file,
        model_file=args.model_file,
        extra_files=extras,
        requirements_file=args.requirements_file,
        config_file=args.config_file,
        runtime=args.runtime,
        archive_format=args.archive_format,
        export_path=args.export_path,
        force=args.force,
        sign_key=args.sign_key,
    )


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.verify is not None:
        if not args.trusted_key:
            parser.error("--verify needs at least one --trusted-key")
        return verify_main(args)
    if args.trusted_key:
        parser.error("--trusted-key goes with --verify")
    missing = [flag for flag, value in (("--model-name", args.model_name), ("--handler", args.handler)) if not value]
    if missing:
        parser.error(f"the following arguments are required: {', '.join(missing)}")
    bar: ProgressBar | None = None
    try:
        request = request_from_args(args)
        if sys.stderr.isatty():
            entries, _ = collect_entries(request)
            total = sum(source.stat().st_size for source, _ in entries)
            if total >= PROGRESS_MIN_BYTES:
                bar = ProgressBar(total, f"packing {request.model_name}")
        path = pack_archive(request, progress=bar)
    except ArchiveError as exc:
        if bar:
            bar.finish()
        print(f"modelserve-archive: error: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        if bar:
            bar.finish()
        print(f"modelserve-archive: error: {exc.strerror or exc}: {exc.filename or ''}".rstrip(": "), file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        if bar:
            bar.finish()
        print("modelserve-archive: interrupted; no archive written", file=sys.stderr)
        return 130
    if bar:
        bar.finish()
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Per-model Python dependencies: the archive's requirements file, installed with pip when the server allows it.

TorchServe's ``install_py_dep_per_model``. Off by default: pip runs code from the packages it installs. When on, the
requirements go into a directory of their own next to the extracted archive (never into the server's environment)
and every worker of that version puts it first on ``sys.path``. Modules the worker template imported before forking
(torch, numpy, Pillow) stay the server's versions.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
from pathlib import Path

from modelserve.archive.reader import ExtractedArchive
from modelserve.errors import ModelLoadError

log = logging.getLogger("modelserve.dependencies")

INSTALL_TIMEOUT_S = 600.0
DEPS_DIR_NAME = "python-deps"
_TAIL_LINES = 8


def deps_dir(extracted: ExtractedArchive) -> Path:
    """Where a version's dependencies go: inside its staging directory, outside the archive's own files."""
    return extracted.staging / DEPS_DIR_NAME


async def install_requirements(extracted: ExtractedArchive, allowed: bool, label: str) -> Path | None:
    """Install the archive's requirements file; return the directory to put on ``sys.path`` (None: nothing).

    Raise ModelLoadError with pip's own words when the installation fails or takes too long.
    """
    name = extracted.manifest.requirements_file
    if not name:
        return None
    requirements = extracted.root / name
    if not requirements.is_file():
        raise ModelLoadError(f"{label}: the archive names requirements file {name!r} but does not contain it")
    if not allowed:
        log.warning(
            "%s: the archive lists Python requirements (%s) that are not installed: install_py_dep_per_model is "
            "false. Set it to true in config.properties (or MODELSERVE_INSTALL_PY_DEP_PER_MODEL=true) to install "
            "them, or install them into the server's environment.",
            label,
            name,
        )
        return None
    target = deps_dir(extracted)
    target.mkdir(exist_ok=True)
    command = [
        sys.executable, "-m", "pip", "install", "--disable-pip-version-check", "--no-input",
        "--no-warn-script-location", "--target", str(target), "-r", str(requirements),
    ]  # fmt: skip
    log.info("%s: installing the requirements in %s", label, name)
    process = await asyncio.create_subprocess_exec(
        *command,
        cwd=str(extracted.root),  # relative paths in the requirements file name files of the archive
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    try:
        output, _ = await asyncio.wait_for(process.communicate(), INSTALL_TIMEOUT_S)
    except (TimeoutError, asyncio.CancelledError) as exc:
        with contextlib.suppress(ProcessLookupError):
            process.kill()
        await process.wait()
        if isinstance(exc, asyncio.CancelledError):
            raise
        raise ModelLoadError(
            f"{label}: installing {name} took longer than {INSTALL_TIMEOUT_S:g} s; install_py_dep_per_model gave up"
        ) from None
    if process.returncode != 0:
        lines = [line for line in output.decode("utf-8", "replace").splitlines() if line.strip()]
        tail = " | ".join(lines[-_TAIL_LINES:]) or "no output"
        raise ModelLoadError(f"{label}: pip could not install {name} (exit code {process.returncode}): {tail}")
    log.info("%s: requirements installed into %s", label, target)
    return target

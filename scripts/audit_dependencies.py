"""Fail when an installed direct dependency is in a known-vulnerable version range.

Offline by design: the ranges come from scripts/known_vulnerabilities.json (dated, with its source), checked against
the versions installed in the running environment, so CI gives the same answer with or without network access.
``--pip-audit`` also runs pip-audit, which asks an online vulnerability service, and fails when that service cannot
be reached rather than reporting a clean result it did not establish.

Usage: .venv/bin/python scripts/audit_dependencies.py [--advisories FILE] [--pip-audit]
"""

from __future__ import annotations

import argparse
import datetime
import json
import re
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import tomllib
from packaging.specifiers import SpecifierSet
from packaging.version import Version

REPO = Path(__file__).resolve().parents[1]
DEFAULT_ADVISORIES = Path(__file__).with_name("known_vulnerabilities.json")
STALE_AFTER_DAYS = 180


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def direct_dependencies() -> set[str]:
    """The runtime dependencies of pyproject.toml, extras included (the test extra is tooling, not shipped)."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    requirements = list(project.get("dependencies", []))
    for extra, items in project.get("optional-dependencies", {}).items():
        if extra != "test":
            requirements.extend(items)
    return {canonical(re.split(r"[<>=!~;\[ ]", item, maxsplit=1)[0]) for item in requirements}


def installed_version(package: str) -> Version | None:
    try:
        return Version(metadata.version(package))
    except metadata.PackageNotFoundError:
        return None


def offline_check(path: Path) -> int:
    data = json.loads(path.read_text())
    covered = {canonical(name) for name in data["covers"]}
    print(f"dependency audit: {len(data['advisories'])} advisories compiled {data['compiled']} ({path.name})")
    age = datetime.date.today() - datetime.date.fromisoformat(data["compiled"])
    if age.days > STALE_AFTER_DAYS:
        print(f"warning: the advisory list is {age.days} days old; refresh it", file=sys.stderr)
    for name in sorted(direct_dependencies() - covered):
        print(f"warning: direct dependency {name} is not covered by the advisory list; add it", file=sys.stderr)
    hits = []
    for advisory in data["advisories"]:
        version = installed_version(advisory["package"])
        if version is not None and SpecifierSet(advisory["affected"]).contains(version, prereleases=True):
            hits.append(f"{advisory['package']} {version}: {advisory['id']} ({advisory['summary']}), "
                        f"affected {advisory['affected']}")  # fmt: skip
    for name in sorted(covered):
        version = installed_version(name)
        print(f"  {name} {version if version is not None else '(not installed)'}")
    for hit in hits:
        print(f"VULNERABLE {hit}", file=sys.stderr)
    if hits:
        print(f"dependency audit: {len(hits)} known-vulnerable installed versions; upgrade them", file=sys.stderr)
        return 1
    print("dependency audit: no installed direct dependency is in a known-vulnerable range")
    return 0


def pip_audit() -> int:
    """pip-audit over the environment; its service unreachable is a failure, never a pass."""
    result = subprocess.run([sys.executable, "-m", "pip_audit", "-f", "json", "--progress-spinner", "off"],
                            capture_output=True, text=True, check=False)  # fmt: skip
    try:
        report = json.loads(result.stdout)
    except ValueError:
        print(f"pip-audit failed: {result.stderr.strip().splitlines()[-1:]}", file=sys.stderr)
        return 1
    dependencies = report.get("dependencies", [])
    audited = [d for d in dependencies if "skip_reason" not in d]
    if not audited:
        print("pip-audit could not audit any package (its vulnerability service is unreachable)", file=sys.stderr)
        return 1
    vulnerable = [d for d in audited if d.get("vulns")]
    for dependency in vulnerable:
        ids = ", ".join(v["id"] for v in dependency["vulns"])
        print(f"VULNERABLE {dependency['name']} {dependency['version']}: {ids}", file=sys.stderr)
    print(f"pip-audit: {len(audited)} packages audited, {len(vulnerable)} vulnerable")
    return 1 if vulnerable else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--advisories", type=Path, default=DEFAULT_ADVISORIES, help="the advisory list (JSON)")
    parser.add_argument("--pip-audit", action="store_true", help="also run pip-audit (needs its online service)")
    args = parser.parse_args(argv)
    status = offline_check(args.advisories)
    if args.pip_audit:
        status = max(status, pip_audit())
    return status


if __name__ == "__main__":
    sys.exit(main())

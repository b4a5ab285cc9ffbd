"""Pin what rosdep knows about package.xml's dependencies: an extract of a ros/rosdistro checkout.

    python tools/rosdistro_extract.py --rosdistro PATH [--rev REV] [--out test/data/rosdistro_extract.yaml]

PATH is a checkout (or a bare git directory, read at REV) of https://github.com/ros/rosdistro. For every
dependency in package.xml the extract keeps either its rosdep rule (rosdep/base.yaml, rosdep/python.yaml: what
`rosdep install` installs, per OS) or, for a ROS package, the repository that releases it in each distribution
(DISTRIBUTIONS). A dependency rosdistro does not know is listed under `unknown` (the test of package.xml refuses
it). test/ros/test_rosdep_keys.py checks package.xml against the extract without a network.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import yaml

REPO_ROOT = Path(__file__).resolve().parents[1]
DISTRIBUTIONS = ("humble", "jazzy")
ROSDEP_FILES = ("rosdep/base.yaml", "rosdep/python.yaml")
DEPEND_TAGS = ("depend", "build_depend", "exec_depend", "test_depend", "build_export_depend", "buildtool_depend")


def package_keys(package_xml: Path) -> list[str]:
    """Every dependency key of a package.xml, in order, once."""
    root = ET.parse(package_xml).getroot()
    keys = [element.text.strip() for tag in DEPEND_TAGS for element in root.findall(tag) if element.text]
    return list(dict.fromkeys(keys))


def reader(path: Path, rev: str) -> Any:
    """A function reading a file of the rosdistro checkout at `path` (work tree, else git at `rev`)."""
    if (path / ROSDEP_FILES[1]).is_file():
        return lambda name: (path / name).read_text()
    return lambda name: subprocess.run(["git", "-C", str(path), "show", f"{rev}:{name}"], check=True,
                                       capture_output=True, text=True).stdout


def released_packages(distribution: dict) -> dict[str, str]:
    """Package name -> the repository that releases it, from a <distro>/distribution.yaml."""
    owner = {}
    for repository, entry in distribution["repositories"].items():
        release = entry.get("release")
        if release:
            for package in release.get("packages") or [repository]:
                owner[package] = repository
    return owner


def extract(keys: list[str], read: Any, source: dict[str, str]) -> dict[str, Any]:
    """The extract of `keys` from the rosdistro files `read` returns."""
    rules: dict[str, Any] = {}
    for name in ROSDEP_FILES:
        rules.update(yaml.safe_load(read(name)))
    releases = {d: released_packages(yaml.safe_load(read(f"{d}/distribution.yaml"))) for d in DISTRIBUTIONS}
    result: dict[str, Any] = {"source": source, "rosdep": {}, "packages": {}, "unknown": []}
    for key in keys:
        if key in rules:
            result["rosdep"][key] = rules[key]
        elif any(key in owner for owner in releases.values()):
            result["packages"][key] = {d: releases[d].get(key) for d in DISTRIBUTIONS}
        else:
            result["unknown"].append(key)
    return result


def main(argv: list[str] | None = None) -> int:
    """Write the extract for the repository's package.xml."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rosdistro", type=Path, required=True, help="ros/rosdistro checkout or git directory")
    parser.add_argument("--rev", default="HEAD", help="revision, for a git directory (default HEAD)")
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "test" / "data" / "rosdistro_extract.yaml")
    args = parser.parse_args(argv)
    read = reader(args.rosdistro, args.rev)
    try:
        commit = subprocess.run(["git", "-C", str(args.rosdistro), "rev-parse", args.rev], check=True,
                                capture_output=True, text=True).stdout.strip()
    except (subprocess.CalledProcessError, FileNotFoundError) as exc:
        print(f"--rosdistro {args.rosdistro}: not a git checkout of ros/rosdistro ({exc})", file=sys.stderr)
        return 2
    source = {"url": "https://github.com/ros/rosdistro", "commit": commit,
              "files": ", ".join([*ROSDEP_FILES, *(f"{d}/distribution.yaml" for d in DISTRIBUTIONS)])}
    data = extract(package_keys(REPO_ROOT / "package.xml"), read, source)
    header = ("# What rosdistro says about package.xml's dependencies (tools/rosdistro_extract.py); checked by\n"
              "# test/ros/test_rosdep_keys.py. Regenerate after changing package.xml.\n")
    args.out.write_text(header + yaml.safe_dump(data, sort_keys=False, width=120))
    print(f"{args.out}: {len(data['rosdep'])} rosdep rules, {len(data['packages'])} ROS packages, "
          f"unknown: {', '.join(data['unknown']) or 'none'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

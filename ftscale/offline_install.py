"""Install ftscale from an offline bundle (`make offline-bundle`) on a machine without the package index.

    python3 install.py --target ~/ftscale-offline       # in the bundle's folder, with the Python that has torch
    ~/ftscale-offline/bin/ftscale doctor --gpu

Copied into the bundle as install.py; it uses the standard library only (the target may lack
everything else). It checks every part's sha256, streams the parts as one tar (the same bytes as
`cat ftscale-offline.tar.part* > ftscale-offline.tar`), checks every file's sha256, then installs
the wheels with `pip install --no-index --no-deps --target`, skipping a package this Python already
has at a version within the project's pins, and puts the checkout's configs, data and the embedded
model beside them, so that the installed ftscale finds them.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.metadata as md
import io
import json
import os
import shlex
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

MANIFEST = "manifest.json"
# written first into the (empty) target: what marks a folder as this installer's, to install into again
MARKER = ".ftscale-offline-install.json"
ALWAYS = {"ftscale"}  # installed even when present: the bundle's is the version under test


class _Parts(io.RawIOBase):
    """The parts read back to back as one stream, hashed on the way."""

    def __init__(self, paths: list[Path]):
        self.paths, self.current, self.sha = list(paths), None, hashlib.sha256()

    def readable(self) -> bool:
        return True

    def readinto(self, buf) -> int:
        while True:
            if self.current is None:
                if not self.paths:
                    return 0
                self.current = open(self.paths.pop(0), "rb")
            n = self.current.readinto(buf)
            if n:
                self.sha.update(memoryview(buf)[:n])
                return n
            self.current.close()
            self.current = None


def _refuse(message: str):
    """Bad or damaged input: one line, exit 2, nothing installed."""
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(2)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def verify_parts(bundle: Path, manifest: dict) -> list[Path]:
    paths = []
    for part in manifest["parts"]:
        path = bundle / part["name"]
        if not path.is_file():
            _refuse(f"{path} is missing: copy every part of the bundle")
        if path.stat().st_size != part["size"] or _sha256(path) != part["sha256"]:
            _refuse(f"{path} is damaged (size or sha256 differs from {MANIFEST}): copy it again")
        paths.append(path)
    return paths


def unpack(bundle: Path, manifest: dict, dest: Path) -> None:
    """Extract the parts' tar into dest and check every file against the manifest."""
    stream = _Parts(verify_parts(bundle, manifest))
    with tarfile.open(fileobj=io.BufferedReader(stream, 1 << 20), mode="r|") as tar:
        tar.extractall(dest, filter="data")
    if stream.sha.hexdigest() != manifest["tar_sha256"]:
        _refuse("the reassembled tar's sha256 differs from the manifest's")
    for f in manifest["files"]:
        if _sha256(dest / f["path"]) != f["sha256"]:
            _refuse(f"{f['path']} does not match its sha256 after unpacking")


def present_ok(name: str, pins: dict[str, str], search: list[str]) -> str | None:
    """The version of `name` this Python already has, if it will do: within the project's pin
    (a package ftscale names), or any version (a dependency of one)."""
    found = list(md.distributions(name=name, path=search))
    if not found:
        return None
    version = found[0].version
    spec = pins.get(name.lower().replace("_", "-"))
    if spec:
        try:
            from packaging.specifiers import SpecifierSet
        except ImportError:  # no way to compare: a present package counts as working
            return version
        if not SpecifierSet(spec).contains(version, prereleases=True):
            return None
    return version


def claim_target(target: Path) -> None:
    """Mark `target` as this installer's, or refuse it (exit 2, nothing written): pip's --target --upgrade
    replaces the target's top-level folders (bin/ among them), so only an empty folder, or one this
    installer marked, is ever installed into."""
    if target.exists() and not target.is_dir():
        _refuse(f"--target {target}: a file, not a folder; choose a new folder, e.g. ~/ftscale-offline")
    if target.is_dir() and any(target.iterdir()) and not (target / MARKER).is_file():
        _refuse(f"--target {target}: the folder is not empty and was not made by this installer (no {MARKER}); "
                "installing would replace its folders (bin/ among them): choose a new or empty folder, e.g. ~/ftscale-offline")
    target.mkdir(parents=True, exist_ok=True)
    if not (target / MARKER).is_file():
        (target / MARKER).write_text(json.dumps({"written_by": "ftscale offline bundle install.py"}) + "\n")


def launcher_text(target: Path) -> str:
    """The `bin/ftscale` script: the target's packages first, this Python, the hub never asked (paths quoted
    for the shell, whatever characters they hold)."""
    return ("#!/bin/sh\n# ftscale from the offline bundle: its packages first, the hub never asked\n"
            f'HF_HUB_OFFLINE=1 PYTHONPATH={shlex.quote(str(target))}"${{PYTHONPATH:+:$PYTHONPATH}}" '
            f'exec {shlex.quote(sys.executable)} -m ftscale "$@"\n')


def install(bundle: Path, target: Path, log=print) -> int:
    manifest = json.loads((bundle / MANIFEST).read_text())
    py = f"{sys.version_info.major}.{sys.version_info.minor}"
    if py != manifest["python_version"]:
        log(f"warning: the bundle's wheels are for Python {manifest['python_version']}, this is {py}")
    claim_target(target)
    staging = target / ".bundle-unpacked"
    shutil.rmtree(staging, ignore_errors=True)
    unpack(bundle, manifest, staging)
    search = [p for p in sys.path if Path(p).resolve() != target.resolve()]
    wheels = []
    for w in manifest["wheels"]:
        have = None if w["name"] in ALWAYS else present_ok(w["name"], manifest["pins"], search)
        if have:
            log(f"skip {w['name']} {w['version']}: {have} is already installed")
        else:
            wheels.append(str(staging / "wheels" / w["file"]))
    if wheels:
        cmd = [sys.executable, "-m", "pip", "install", "--no-index", "--no-deps", "--upgrade", "--target", str(target), *wheels]
        if subprocess.run(cmd).returncode != 0:
            log("error: pip could not install the wheels (its messages are above)")
            return 1
    for folder in ("configs", "data", "models"):  # ftscale finds them beside its package (ftscale/paths.py)
        if (staging / "root" / folder).is_dir():
            shutil.copytree(staging / "root" / folder, target / folder, dirs_exist_ok=True)
    launcher = target / "bin" / "ftscale"  # beside what pip put in bin/, replacing its ftscale script
    launcher.parent.mkdir(exist_ok=True)
    launcher.write_text(launcher_text(target))
    umask = os.umask(0)  # read back at once: this script runs one thread
    os.umask(umask)
    launcher.chmod(0o777 & ~umask)  # executable, readable by whom the user's umask allows
    shutil.rmtree(staging, ignore_errors=True)
    log(f"installed {len(wheels)} wheel(s) into {target}; run: {launcher} doctor --gpu")
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--target", type=Path, default=Path.home() / "ftscale-offline", help="where to install (default: ~/ftscale-offline)")
    p.add_argument("--bundle", type=Path, default=Path(__file__).resolve().parent, help="the bundle's folder (default: this file's)")
    args = p.parse_args(argv)
    if not (args.bundle / MANIFEST).is_file():
        p.error(f"{args.bundle}: no {MANIFEST}; run this in the bundle's folder or give --bundle")
    return install(args.bundle, args.target.expanduser().resolve())


if __name__ == "__main__":
    raise SystemExit(main())

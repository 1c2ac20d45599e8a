"""`make offline-bundle`: everything `ftscale doctor --gpu` needs on a machine cut off from the
package index, in parts of at most a set size, with one command that installs from them.

    make offline-bundle                                       # offline-bundle/, parts of <= 60 MiB
    .venv/bin/python -m ftscale.offline_bundle --part-size-mib 20 --present "torch==2.11.0 transformers==5.17.0 peft accelerate"

The wheels are resolved for the target (default CPython 3.12, manylinux x86_64) by pip, given the
versions the target already has (`--present`): what those need is left out (torch alone brings
gigabytes of CUDA libraries), the rest is downloaded. ftscale itself goes in as a wheel built
from this checkout, with its configs, data and the prepared embedded model beside it. On the
target: `python3 install.py --target DIR` in the bundle's folder (ftscale/offline_install.py).
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import tomllib
from pathlib import Path

from . import paths
from .atomic import atomic_dir, write_json
from .chatdata import sha256_file
from .errors import ConfigError, FtscaleError, run_command
from .flags import Parser
from .outputdir import check_output_dir

PART_PREFIX = "ftscale-offline.tar.part"
DEFAULT_PRESENT = "torch==2.11.0 transformers==5.17.0 peft accelerate"
EMBEDDED = "smollm2-135m"
MANIFEST = "manifest.json"
BESIDE = ("install.py", "README.txt")  # what the bundle's folder holds besides the parts and the manifest


class PartWriter:
    """A write-only stream cut into files of at most `limit` bytes, each hashed."""

    def __init__(self, folder: Path, limit: int):
        self.folder, self.limit, self.parts, self.total = folder, limit, [], hashlib.sha256()
        self.file, self.sha, self.size = None, None, 0

    def _next(self) -> None:
        self._close_part()
        name = f"{PART_PREFIX}{len(self.parts):03d}"
        self.file, self.sha, self.size = open(self.folder / name, "wb"), hashlib.sha256(), 0
        self.parts.append({"name": name})

    def _close_part(self) -> None:
        if self.file is not None:
            self.file.close()
            self.parts[-1] |= {"size": self.size, "sha256": self.sha.hexdigest()}
            self.file = None

    def write(self, data: bytes) -> int:
        view = memoryview(data)
        self.total.update(view)
        while view:
            if self.file is None or self.size == self.limit:
                self._next()
            chunk = view[: self.limit - self.size]
            self.file.write(chunk)
            self.sha.update(chunk)
            self.size += len(chunk)
            view = view[len(chunk):]
        return len(data)

    def close(self) -> list[dict]:
        self._close_part()
        return self.parts


def platforms(platform: str) -> list[str]:
    """A manylinux_2_N tag and every older one it runs (pip's --platform takes each literally)."""
    m = re.fullmatch(r"manylinux_2_(\d+)_(\w+)", platform)
    if not m:
        return [platform]
    top, arch = int(m.group(1)), m.group(2)
    legacy = {5: "manylinux1", 12: "manylinux2010", 17: "manylinux2014"}
    tags = [f"manylinux_2_{n}_{arch}" for n in range(top, 4, -1)]
    return tags + [f"{legacy[n]}_{arch}" for n in legacy if n <= top]


def project_requirements() -> tuple[list[str], dict[str, str]]:
    """(what doctor --gpu needs: ftscale's dependencies, its cuda extra without vllm, and liger-kernel;
    name -> specifier of everything ftscale pins), from pyproject.toml."""
    from packaging.requirements import Requirement

    project = tomllib.loads((paths.ROOT / "pyproject.toml").read_text())["project"]
    cuda = [r for r in project["optional-dependencies"]["cuda"] if Requirement(r).name != "vllm"]
    needed = project["dependencies"] + cuda
    return [*needed, "liger-kernel"], {Requirement(r).name.lower(): str(Requirement(r).specifier) for r in needed}


def _pip(args: list[str], what: str) -> None:
    proc = subprocess.run([sys.executable, "-m", "pip", *args], capture_output=True, text=True)
    if proc.returncode != 0:
        raise FtscaleError(f"{what} failed (pip {' '.join(args[:3])} ...):\n{proc.stderr.strip()[-2000:]}")


def _target_args(python_version: str, platform: str) -> list[str]:
    return ["--only-binary=:all:", "--python-version", python_version, "--implementation", "cp",
            *[a for tag in platforms(platform) for a in ("--platform", tag)]]


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def closure(report: dict, roots: list[str], python_version: str) -> set[str]:
    """Names of `roots` and everything they need in pip's resolution, extras followed
    (torch needs cuda-toolkit[cublas,...], whose extras name the CUDA libraries)."""
    from packaging.requirements import Requirement

    env = {"python_version": python_version, "python_full_version": f"{python_version}.0", "sys_platform": "linux",
           "platform_system": "Linux", "platform_machine": "x86_64", "os_name": "posix",
           "implementation_name": "cpython", "platform_python_implementation": "CPython"}
    requires = {_norm(i["metadata"]["name"]): [Requirement(r) for r in i["metadata"].get("requires_dist") or []]
                for i in report["install"]}
    seen, todo = set(), [(_norm(r), frozenset()) for r in roots]
    while todo:
        name, extras = todo.pop()
        if (name, extras) in seen or name not in requires:
            continue
        seen.add((name, extras))
        for req in requires[name]:
            if req.marker is None or any(req.marker.evaluate(env | {"extra": e}) for e in {"", *extras}):
                todo.append((_norm(req.name), frozenset(req.extras)))
    return {name for name, _ in seen}


def left_out(report: dict, present: list[str], python_version: str) -> set[str]:
    """The compiled wheels that the target's compiled present packages bring (torch: triton and
    the CUDA libraries, gigabytes). Pure-Python wheels are carried all the same (a present
    transformers outside the pins can be replaced; nothing a carried package imports is missing);
    the installer skips what the target already has."""
    from packaging.requirements import Requirement

    pure = {_norm(i["metadata"]["name"]) for i in report["install"] if i["download_info"]["url"].endswith("-none-any.whl")}
    compiled = [_norm(Requirement(p).name) for p in present if _norm(Requirement(p).name) not in pure]
    return closure(report, compiled, python_version) - pure


def resolve(packages: list[str], present: list[str], target: list[str], pip_args: list[str],
            work: Path) -> tuple[list[dict], list[str]]:
    """(what to download as name/version, what was left out as present), from pip's resolution."""
    report_path = work / "resolution.json"
    _pip(["install", "--dry-run", "--ignore-installed", "--quiet", "--report", str(report_path), "--target",
          str(work / "resolve-target"), *target, *pip_args, *packages, *present],
         "resolving the wheels for the target")
    report = json.loads(report_path.read_text())
    python_version = target[target.index("--python-version") + 1]
    skip = left_out(report, present, python_version)
    wanted, skipped = [], []
    for item in report["install"]:
        name, version = item["metadata"]["name"], item["metadata"]["version"]
        (skipped.append(f"{name}=={version}") if _norm(name) in skip else wanted.append({"name": name, "version": version}))
    return wanted, skipped


def _add(tar: tarfile.TarFile, path: Path, arcname: str, files: list[dict]) -> None:
    tar.add(path, arcname=arcname, recursive=False)
    files.append({"path": arcname, "size": path.stat().st_size, "sha256": sha256_file(path)})


def root_files(with_model: bool) -> list[tuple[Path, str]]:
    """(file, name in the bundle) of the checkout's configs and data, and the prepared embedded model."""
    from . import models

    found = [(p, f"root/{p.relative_to(paths.ROOT)}") for p in sorted((paths.ROOT / "configs").rglob("*"))
             if p.is_file() and "__pycache__" not in p.parts]
    found += [(p, f"root/{p.relative_to(paths.ROOT)}") for p in sorted((paths.ROOT / "data").rglob("*.jsonl"))]
    if with_model:
        model = models.local_dir(EMBEDDED)
        if not (model / models.MANIFEST).is_file():
            raise FtscaleError(f"the embedded model is not prepared in {model}: run `ftscale models prepare {EMBEDDED}` first")
        found += [(p, f"root/models/{EMBEDDED}/{p.relative_to(model)}") for p in sorted(model.rglob("*")) if p.is_file()]
    return found


def build(out: Path, part_mib: float, python_version: str, platform: str, present: list[str], packages: list[str] | None,
          pip_args: list[str], with_model: bool = True, log=print) -> dict:
    out = check_folder(out)  # before anything is built: the folder is replaced at the end
    if part_mib <= 0:
        raise ConfigError(f"--part-size-mib {part_mib}: must be above 0")
    if not re.fullmatch(r"3\.\d+", python_version):
        raise ConfigError(f"--python-version {python_version}: expected 3.N, e.g. 3.12")
    needed, pins = project_requirements()
    packages = needed if packages is None else packages
    target = _target_args(python_version, platform)
    with tempfile.TemporaryDirectory(prefix="ftscale-bundle-") as tmp, atomic_dir(out) as folder:
        work = Path(tmp)
        wheels = work / "wheels"
        log("building the ftscale wheel from this checkout")
        _pip(["wheel", "--no-deps", "--no-build-isolation", "--quiet", "-w", str(wheels), str(paths.ROOT)], "building ftscale's wheel")
        log(f"resolving for CPython {python_version} on {platform}, given {' '.join(present) or 'nothing'} on the target")
        wanted, skipped = resolve(packages, present, target, pip_args, work)
        if wanted:
            log(f"downloading {len(wanted)} wheels (without their dependencies: the resolution named them all)")
            _pip(["download", "--no-deps", "--quiet", "-d", str(wheels), *target, *pip_args,
                  *[f"{w['name']}=={w['version']}" for w in wanted]], "downloading the wheels")
        manifest = _write_parts(folder, int(part_mib * 2**20), sorted(wheels.glob("*.whl")), root_files(with_model))
        manifest |= {"python_version": python_version, "platforms": platforms(platform), "present": present,
                     "left_out_as_present": skipped, "pins": pins}
        write_json(folder / MANIFEST, manifest)
        shutil.copyfile(Path(__file__).with_name("offline_install.py"), folder / "install.py")
        (folder / "README.txt").write_text(INSTRUCTIONS.format(n=len(manifest["parts"]), target=" ".join(present)))
    log(f"{out}: {len(manifest['wheels'])} wheels, {len(manifest['files'])} files, {len(manifest['parts'])} parts of "
        f"<= {part_mib:g} MiB; on the target: python3 install.py --target DIR")
    return manifest


def _bundle_files(manifest: dict) -> list[str]:
    """The files an earlier bundle wrote into its folder, as its manifest lists them (KeyError: not a bundle's)."""
    if not {"tar_sha256", "files", "wheels"} <= set(manifest):
        raise KeyError("not a bundle's manifest")
    return [*(part["name"] for part in manifest["parts"]), *BESIDE]


def check_folder(out: Path) -> Path:
    """`out` if the bundle may be written there: a new or empty folder, or an earlier bundle's with nothing else."""
    return check_output_dir(out, manifest=MANIFEST, writer="`make offline-bundle`", written=_bundle_files)


def _write_parts(folder: Path, limit: int, wheels: list[Path], roots: list[tuple[Path, str]]) -> dict:
    from packaging.utils import parse_wheel_filename

    writer, files = PartWriter(folder, limit), []
    with tarfile.open(fileobj=writer, mode="w|", format=tarfile.PAX_FORMAT) as tar:
        for w in wheels:
            _add(tar, w, f"wheels/{w.name}", files)
        for path, arcname in roots:
            _add(tar, path, arcname, files)
    parts = writer.close()
    described = []
    for w in wheels:
        name, version, *_ = parse_wheel_filename(w.name)
        described.append({"file": w.name, "name": str(name), "version": str(version)})
    return {"parts": parts, "tar_sha256": writer.total.hexdigest(), "files": files, "wheels": described}


INSTRUCTIONS = """ftscale offline bundle: {n} parts, install.py, manifest.json.
Made for a Python that already has: {target}

Copy this whole folder to the machine, then, with the Python that has torch:

    python3 install.py --target ~/ftscale-offline
    ~/ftscale-offline/bin/ftscale doctor --gpu

install.py checks every part's sha256, installs the wheels this Python lacks (pip --no-index
--no-deps --target), and puts the configs, data and the embedded model beside them. The parts
are one tar cut in pieces: `cat ftscale-offline.tar.part* > ftscale-offline.tar` rebuilds it.
"""


def main(argv: list[str] | None = None) -> int:
    p = Parser(prog="python -m ftscale.offline_bundle", description=__doc__.split("\n\n")[0])
    p.add_argument("--output-dir", type=Path, hidden=("--out",), default=paths.ROOT / "offline-bundle", help="the bundle's folder (default: offline-bundle/)")
    p.add_argument("--part-size-mib", type=float, default=60.0, help="largest part (default 60 MiB)")
    p.add_argument("--python-version", default="3.12", help="the target's Python (default 3.12)")
    p.add_argument("--platform", default="manylinux_2_28_x86_64", help="the target's newest manylinux tag (default manylinux_2_28_x86_64)")
    p.add_argument("--present", default=DEFAULT_PRESENT, help=f"what the target already has (default: {DEFAULT_PRESENT!r})")
    p.add_argument("--packages", help="requirements to carry besides ftscale's wheel (default: its dependencies, "
                   "its cuda extra without vllm, and liger-kernel)")
    p.add_argument("--no-model", action="store_true", help="leave the embedded model out")
    p.add_argument("--pip-arg", action="append", default=[], help="passed to pip, e.g. --pip-arg=--no-index --pip-arg=--find-links=DIR")
    args = p.parse_args(argv)
    return run_command(lambda: build(args.output_dir, args.part_size_mib, args.python_version, args.platform, args.present.split(),
                                     args.packages.split() if args.packages is not None else None, args.pip_arg,
                                     with_model=not args.no_model) and None)


if __name__ == "__main__":
    raise SystemExit(main())

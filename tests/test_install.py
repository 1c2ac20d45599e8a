"""ftscale installed from its wheel (not editable) works from any folder: the shipped configs,
tasks and datasets are found by name as package data, and a user's own paths still win."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# test_install.py and test_offline_bundle.py build ftscale's wheel in the checkout's build/
# folder: under xdist they share a worker, so one build at a time.
pytestmark = pytest.mark.xdist_group("builds_the_wheel")


def _source_files() -> list[str]:
    """The files a clone holds (tracked, or new and not ignored): the wheel is built from these alone."""
    out = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                         capture_output=True, text=True, check=True).stdout.split("\n")
    return [f for f in out if f and not f.startswith("tests/") and (ROOT / f).is_file()]


def _run(cmd: list[str], cwd: Path, env: dict, timeout: int = 600) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{' '.join(map(str, cmd))} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """A fresh virtual environment with ftscale's wheel installed into it. Its dependencies (torch,
    transformers, ... several GB) are the test environment's own, reached through a path entry, so
    the test needs no package index; ftscale itself comes from the wheel only."""
    tmp = tmp_path_factory.mktemp("install")
    src = tmp / "src"
    for rel in _source_files():
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        (src / rel).write_bytes((ROOT / rel).read_bytes())
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp / "wheel"),
          str(src)], tmp, env)
    wheel = next((tmp / "wheel").glob("ftscale-*.whl"))
    venv = tmp / "venv"
    _run([sys.executable, "-m", "venv", str(venv)], tmp, env)
    python = venv / "bin" / "python"
    purelib = Path(_run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], tmp,
                        env).stdout.strip())
    # a plain path line: the test environment's packages become visible, but its .pth files (the
    # editable install of this checkout among them) are not run
    (purelib / "test-environment.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    _run([str(python), "-m", "pip", "install", "-q", "--no-deps", "--no-index", str(wheel)], tmp, env)
    empty = tmp / "empty"
    empty.mkdir()
    env["FTSCALE_MODELS_DIR"] = str(ROOT / "models")  # prepared by `make setup`; not shipped in the wheel
    return {"venv": venv, "python": python, "ftscale": venv / "bin" / "ftscale", "cwd": empty, "env": env}


def test_the_wheel_is_what_runs(installed):
    out = _run([str(installed["python"]), "-c", "import ftscale, ftscale.paths as p; print(ftscale.__file__); "
                "print(p.IS_CHECKOUT); print(p.CONFIGS)"], installed["cwd"], installed["env"]).stdout.split()
    assert Path(out[0]).is_relative_to(installed["venv"]), out
    assert out[1] == "False"
    assert (Path(out[2]) / "experiments" / "formatting-smollm2-cpu.yaml").is_file()


def test_models_list_and_task_check_from_an_empty_folder(installed):
    models = _run([str(installed["ftscale"]), "models", "list"], installed["cwd"], installed["env"]).stdout
    assert "smollm2-135m" in models
    check = _run([str(installed["ftscale"]), "task", "check", "formatting"], installed["cwd"], installed["env"])
    assert "formatting" in check.stdout + check.stderr
    assert list(installed["cwd"].iterdir()) == [], "task check wrote into the user's folder"


def test_run_the_main_job_by_name_from_an_empty_folder(installed):
    """The main job, shrunk by overrides (8 examples, one step, 3 eval questions), found by name."""
    cwd, env = installed["cwd"], installed["env"]
    _run([str(installed["ftscale"]), "run", "formatting-smollm2-cpu", "--num_train_examples", "8", "--train.epochs", "1",
          "--eval.limit", "3", "--eval.max_new_tokens", "16", "--eval.baseline_variants", "[]"], cwd, env, timeout=900)
    exp = cwd / "runs" / "formatting-smollm2-cpu"
    assert (exp / "summary.md").is_file(), sorted(str(p.relative_to(cwd)) for p in cwd.rglob("*"))[:50]
    results = json.loads((exp / "results.json").read_text())
    assert results and json.dumps(results).count("format_ok") >= 1
    # the shipped dataset was read where it lies; nothing was copied beside the user's run
    assert sorted(p.name for p in cwd.iterdir()) == ["runs"]


def test_a_users_own_file_wins_over_the_shipped_one(installed, tmp_path):
    """A relative data path that exists in the working folder is the user's, not the shipped file."""
    cwd = tmp_path / "project"
    (cwd / "data" / "formatting").mkdir(parents=True)
    shipped = ROOT / "data" / "formatting" / "eval.jsonl"
    mine = cwd / "data" / "formatting" / "eval.jsonl"
    mine.write_text("".join(shipped.read_text().splitlines(keepends=True)[:2]))
    code = ("from ftscale.config import load_config; "
            "c = load_config('formatting-smollm2-cpu'); print(c.data.eval); print(c.data.train)")
    out = _run([str(installed["python"]), "-c", code], cwd, installed["env"]).stdout.split()
    assert Path(out[0]) == Path("data/formatting/eval.jsonl")  # the user's, relative to their folder
    assert Path(out[1]).is_absolute() and Path(out[1]).is_relative_to(installed["venv"])  # the shipped pool

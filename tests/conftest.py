"""Shared fixtures: the real embedded model, a real LoRA adapter trained once per session."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MAIN_CONFIG = ROOT / "configs" / "experiments" / "formatting-smollm2-cpu.yaml"
BIN = Path(sys.executable).parent


@pytest.fixture(scope="session", autouse=True)
def _in_repo_root():
    os.chdir(ROOT)  # configs name data files relative to the checkout


@pytest.fixture(scope="session")
def embedded_model() -> str:
    from ftscale import models

    if not (models.local_dir("smollm2-135m") / models.MANIFEST).is_file():
        pytest.fail("the embedded model is not prepared: run `make setup` (ftscale models prepare smollm2-135m)")
    return "smollm2-135m"


# A short, real training run: enough steps for the format to start sticking on two CPU cores.
TRAIN_OVERRIDES = ["--num_train_examples", "24", "--train.epochs", "3", "--train.learning_rate", "3e-4",
                   "--train.batch_size", "8"]


@pytest.fixture(scope="session")
def trained_run(embedded_model, tmp_path_factory) -> Path:
    """Train through the user's entry point: `accelerate launch train/sft.py ...`."""
    run_dir = tmp_path_factory.mktemp("sft") / "n0024"
    cmd = [str(BIN / "accelerate"), "launch", "--num_processes", "1", "--cpu", "train/sft.py",
           "--config", str(MAIN_CONFIG), "--output_dir", str(run_dir), *TRAIN_OVERRIDES]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return run_dir


def ctrl_c_reaches_it() -> None:
    """`preexec_fn` of a child a test stops with SIGINT (Ctrl-C): started as a shell's background job
    (as a CI script may start the suite), the test session ignores SIGINT, every child inherits
    that, and Python in the child would never raise KeyboardInterrupt."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _snapshot(folder: Path) -> frozenset:
    """Every path below `folder` with its size; os.walk passes over folders renamed away meanwhile."""
    out = set()
    for root, dirs, files in os.walk(folder):
        for name in dirs + files:
            try:
                out.add((os.path.join(root, name), os.stat(os.path.join(root, name)).st_size))
            except FileNotFoundError:  # renamed away while we looked
                pass
    return frozenset(out)


def kill_at_change(args: list[str], folder: Path, changes: int) -> bool:
    """Run `ftscale ARGS` and SIGKILL its whole process group at the `changes`-th change seen in
    `folder`: an event of the work itself, so a faster machine is killed at the same points. True if
    it was killed while still working, False if it finished first."""
    proc = subprocess.Popen([str(BIN / "ftscale"), *map(str, args)], cwd=ROOT, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    seen, last = 0, _snapshot(folder)
    while proc.poll() is None:
        time.sleep(0.05)
        now = _snapshot(folder)
        if now != last:
            seen, last = seen + 1, now
        if seen >= changes:
            os.killpg(proc.pid, signal.SIGKILL)  # no chance to clean up: the worst case
            proc.wait()
            return True
    return False


@pytest.fixture(scope="session")
def vllm_server(trained_run, tmp_path_factory):
    """ONE vLLM server for the session (startup takes 30-110 s on two cores): the embedded model
    with the session's adapter served as `ft`. tests/test_serve_vllm.py's last test kills it, so
    the modules that share it sort before that one (test_migrate_walkthrough.py does)."""
    from ftscale.config import load_config
    from ftscale.serve.server import server_for

    cfg = load_config(MAIN_CONFIG, {"eval.limit": "12"})
    log = tmp_path_factory.mktemp("vllm") / "server.log"
    with server_for(cfg, {"ft": trained_run}, log) as s:
        yield s
    assert not s.alive()

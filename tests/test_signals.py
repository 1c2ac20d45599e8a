"""SIGTERM (a scheduler's time limit, `kill`) and SIGHUP (a closed terminal) stop a command as Ctrl-C
does: every process it started stops too, it exits 143 or 129, what it finished is kept, and its claim
is given back; and one experiment folder has one `ftscale run` at a time."""

from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path

import psutil
import yaml

from ftscale import completion

from conftest import BIN, MAIN_CONFIG, ROOT

RUN = ["--num_train_examples", "[0, 32]", "--train.epochs", "2", "--train.batch_size", "4", "--eval.limit", "3",
       "--eval.max_new_tokens", "12", "--eval.baseline_variants", "[]", "--eval.probes", "null"]


def _start(*args) -> subprocess.Popen:
    return subprocess.Popen([str(BIN / "ftscale"), *map(str, args)], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def _wait_for(condition, proc: subprocess.Popen, what: str, timeout: float = 600) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert proc.poll() is None, f"ended before {what}: {proc.communicate()[1][-3000:]}"
        assert time.monotonic() < deadline, f"no {what} within {timeout:.0f} s"
        time.sleep(0.2)


def _family(proc: subprocess.Popen) -> list[psutil.Process]:
    return psutil.Process(proc.pid).children(recursive=True)


def _left(family: list[psutil.Process]) -> list[str]:
    """The processes of `family` still running (a zombie waiting for its parent has ended)."""
    out = []
    for p in family:
        try:
            if p.is_running() and p.status() != psutil.STATUS_ZOMBIE:
                out.append(" ".join(p.cmdline())[:120])
        except psutil.NoSuchProcess:
            pass
    return out


def test_a_second_run_is_refused_and_sigterm_stops_the_first_keeping_what_it_finished(embedded_model, tmp_path):
    args = ["run", MAIN_CONFIG, "--output-dir", tmp_path, *RUN, "--jobs", "2"]
    exp = tmp_path / "formatting-smollm2-cpu"
    base_eval = exp / "n0000-seed42" / "eval-default"
    first = _start(*args)
    try:
        # the untrained base is evaluated in one cell process while the other trains n=32
        _wait_for(lambda: completion.read(base_eval) is not None, first, "finished evaluation of the base")
        assert completion.read(exp / "n0032-seed42") is None, "the training finished too soon to be interrupted"
        second = subprocess.run([str(BIN / "ftscale"), *map(str, args)], cwd=ROOT, capture_output=True, text=True,
                                timeout=300)
        assert second.returncode == 2, second.stderr[-2000:]
        assert f"{exp}: in use by ftscale run on " in second.stderr and f"pid {first.pid}," in second.stderr
        family = _family(first)
        assert len(family) >= 2  # the two cell processes (and multiprocessing's helper)
        first.send_signal(signal.SIGTERM)  # to the command only, as `kill` or a scheduler sends it
        _, err = first.communicate(timeout=120)
    finally:
        if first.poll() is None:
            first.kill()
    assert first.returncode == 143, err[-3000:]
    assert "finished steps are kept" in err and "SIGTERM" in err and "Traceback" not in err
    deadline = time.monotonic() + 15
    while _left(family) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not _left(family)
    assert completion.valid(base_eval) is not None  # finished before the signal: kept
    assert completion.read(exp / "n0032-seed42") is None  # interrupted: no record
    from ftscale.claims import Claim

    assert Claim(exp, "the next run").acquire()  # given back on the way out


def test_sighup_stops_a_sweep_and_its_accelerate_training(embedded_model, tmp_path):
    spec = {"name": "hup", "base": str(MAIN_CONFIG),
            "overrides": {"eval.limit": 2, "eval.max_new_tokens": 8, "train.batch_size": 4},
            "systems": [{"name": "ddp", "model": "smollm2-135m",
                         "accelerate_config": str(ROOT / "configs" / "accelerate" / "cpu_ddp.yaml")}],
            "num_train_examples": [32], "seeds": [1], "epochs": [2], "prompt_variants": ["default"],
            "baseline_variants": [], "output_dir": str(tmp_path / "sweeps")}
    path = tmp_path / "hup.yaml"
    path.write_text(yaml.safe_dump(spec))
    sweep = _start("sweep", path)
    try:
        # accelerate launch -> torchrun -> two training processes, in a session of their own
        _wait_for(lambda: sum("ftscale.train.sft" in " ".join(p.cmdline()) for p in _family(sweep)) >= 3, sweep,
                  "training processes")
        family = _family(sweep)
        sweep.send_signal(signal.SIGHUP)  # the terminal it ran in was closed
        _, err = sweep.communicate(timeout=120)
    finally:
        if sweep.poll() is None:
            sweep.kill()
    assert sweep.returncode == 129, err[-3000:]
    assert "finished steps are kept" in err and "SIGHUP" in err
    deadline = time.monotonic() + 15
    while _left(family) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not _left(family)
    (cell,) = [p for p in (tmp_path / "sweeps" / "hup" / "ddp" / "e2").iterdir() if p.name.startswith("n0032")]
    assert completion.read(cell) is None and not (cell / "adapter").exists()
    from ftscale.claims import Claim

    assert Claim(cell, "the next sweep").acquire()

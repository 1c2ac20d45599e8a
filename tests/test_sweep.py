"""Sweeps on the embedded model: a tiny real grid killed with SIGKILL at random moments and resumed,
failed cells recorded without stopping the others, bad configs refused before any cell runs, the
status line, the report's refusal of an edited run directory, and one job per cell via submitit."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import time

import pytest
import yaml

from ftscale.errors import ConfigError
from ftscale.results_store import ResultsStore
from ftscale.sweepconfig import expand, load_sweep

from conftest import BIN, MAIN_CONFIG, ROOT

LORA = {"name": "smollm2 LoRA", "backend": "local", "model": "smollm2-135m"}


def _sweep(tmp_path, name="tiny", systems=(LORA,), sizes=(0, 4), seeds=(1, 2), **extra):
    spec = {"name": name, "base": str(MAIN_CONFIG),
            "overrides": {"eval.limit": 2, "eval.max_new_tokens": 8, "eval.batch_size": 2, "train.batch_size": 4},
            "systems": list(systems), "num_train_examples": list(sizes), "seeds": list(seeds), "epochs": [1],
            "prompt_variants": ["default"], "baseline_variants": [], "output_dir": str(tmp_path / "sweeps"), **extra}
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def _ftscale(*args, timeout=900):
    return subprocess.run([str(BIN / "ftscale"), *map(str, args)], cwd=ROOT, capture_output=True, text=True, timeout=timeout)


def test_a_sweep_killed_at_random_moments_ends_with_every_cell_done_once(embedded_model, tmp_path):
    path = _sweep(tmp_path)
    sweep, base = load_sweep(path)
    cells = expand(sweep, base)
    assert [(c.kind, c.n, c.seed) for c in cells] == [("base", 0, 1), ("train", 4, 1), ("train", 4, 2)]
    rng, interrupted = random.Random(7), 0
    for trial in range(6):
        proc = subprocess.Popen([str(BIN / "ftscale"), "sweep", str(path)], cwd=ROOT, start_new_session=True,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(rng.uniform(2, 12))
        interrupted += proc.poll() is None
        os.killpg(proc.pid, signal.SIGKILL)  # no chance to clean up: the worst case
        proc.wait()
        store = ResultsStore(sweep.sweep_dir / "results.db")
        assert store.integrity() == "ok", f"trial {trial}"
        assert len(store.all()) == len(cells)
        store.close()
    assert interrupted >= 5  # killed while it was working, not after it had finished
    final = _ftscale("sweep", path)
    assert final.returncode == 0, final.stderr[-3000:]
    store = ResultsStore(sweep.sweep_dir / "results.db")
    rows = store.all()
    assert sorted(r["key"] for r in rows) == sorted(c.key for c in cells)
    assert all(r["status"] == "done" and r["completions"] == 1 for r in rows), rows
    assert len({r["run_dir"] for r in rows}) == len(cells)
    for c in cells:
        assert (c.run_dir / "eval-default" / "scores.json").is_file()
        assert (c.run_dir / "adapter").is_dir() == (c.n > 0)
    store.close()

    status = _ftscale("sweep", path, "--status")
    assert "3 cells: 3 done, 0 running, 0 failed, 0 left" in status.stdout
    again = _ftscale("sweep", path)  # nothing left to do: no cell is run twice
    assert "3 done, 0 to run" in again.stdout

    report = _ftscale("report", sweep.sweep_dir)
    assert report.returncode == 0, report.stderr[-3000:]
    assert (sweep.sweep_dir / "report.html").is_file() and (sweep.sweep_dir / "report.md").is_file()
    # a run directory edited by hand so that its files disagree is refused, naming it
    gens = cells[1].run_dir / "eval-default" / "generations.jsonl"
    gens.write_text(gens.read_text().splitlines(keepends=True)[0])
    refused = _ftscale("report", sweep.sweep_dir)
    assert refused.returncode == 2
    assert f"{gens.parent}: generations.jsonl holds 1 records but scores.json says n=2" in refused.stderr


def test_a_failed_cell_is_recorded_and_the_others_go_on(embedded_model, tmp_path):
    qlora = {"name": "smollm2 QLoRA", "backend": "local", "model": "smollm2-135m", "quantization": "4bit"}
    path = _sweep(tmp_path, systems=(qlora, LORA), sizes=(0,), seeds=(1,))
    out = _ftscale("sweep", path)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "1 done" in out.stdout and "1 failed" in out.stdout
    status = _ftscale("sweep", path, "--status").stdout
    assert "failed: smollm2 QLoRA n=0 seed=1" in status and "4bit (QLoRA) needs a CUDA GPU" in status

    path = _sweep(tmp_path, name="fast", systems=(qlora, LORA), sizes=(0,), seeds=(1,))
    out = _ftscale("sweep", path, "--fail-fast")
    assert out.returncode == 2 and "failed (--fail-fast)" in out.stderr
    store = ResultsStore(tmp_path / "sweeps" / "fast" / "results.db")
    assert [r["status"] for r in store.all()] == ["failed", "pending"]  # stopped before the LoRA cell


@pytest.mark.parametrize("change, message", [
    ({"systems": [{"name": "x", "model": "no-such-model-here"}]}, "model 'no-such-model-here' is not a name in configs/models/"),
    ({"prompt_variants": ["long"]}, "prompt variants ['long'] are unknown to task 'formatting'"),
    ({"metrics": ["bleu"]}, "metrics: ['bleu'] are not metrics of task 'formatting'"),
    ({"systems": [{"name": "x", "backend": "anthropic", "model": "m"}]}, "systems.0.backend"),
    ({"overrides": {"task": "tone"}}, "task: unknown task 'tone'"),
])
def test_a_bad_sweep_config_fails_before_any_cell_runs(tmp_path, change, message):
    path = _sweep(tmp_path)
    spec = yaml.safe_load(path.read_text()) | change
    path.write_text(yaml.safe_dump(spec))
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]").replace("(", r"\(").replace(")", r"\)")):
        load_sweep(path)
    out = _ftscale("sweep", path)
    assert out.returncode == 2 and not (tmp_path / "sweeps" / "tiny").exists()


def test_one_job_per_cell_through_submitit(embedded_model, tmp_path):
    path = _sweep(tmp_path, name="jobs", sizes=(0,), seeds=(1,))
    from ftscale.sweep import submit

    jobs = submit(path, "local", timeout_min=10, partition=None, gpus_per_node=0, log=lambda *_: None)
    assert len(jobs) == 1
    assert [job.result() for job in jobs] == ["done"]  # ran in its own process, met us in the store
    store = ResultsStore(tmp_path / "sweeps" / "jobs" / "results.db")
    (row,) = store.all()
    assert row["status"] == "done" and row["pid"] != os.getpid()

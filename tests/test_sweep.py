"""Sweeps on the embedded model: a tiny real grid killed with SIGKILL at random moments and resumed,
failed cells recorded without stopping the others, bad configs refused before any cell runs, the
status line, the report's refusal of an edited run directory, one job per cell via submitit, and two
sweeps of one folder at once running each cell once."""

from __future__ import annotations

import json
import os
import random
import subprocess

import pytest
import yaml

from ftscale import completion
from ftscale.errors import ConfigError
from ftscale.results_store import ResultsStore, is_done
from ftscale.stepinputs import train_inputs
from ftscale.sweepconfig import expand, load_sweep

from conftest import BIN, MAIN_CONFIG, ROOT, kill_at_change
from openai_standin import StandIn

LORA = {"name": "smollm2 LoRA", "backend": "local", "model": "smollm2-135m"}


def _sweep(tmp_path, name="tiny", systems=(LORA,), sizes=(0, 4), seeds=(1, 2), overrides=None, **extra):
    spec = {"name": name, "base": str(MAIN_CONFIG),
            "overrides": {"eval.limit": 2, "eval.max_new_tokens": 8, "eval.batch_size": 2, "train.batch_size": 4,
                          **(overrides or {})},
            "systems": list(systems), "num_train_examples": list(sizes), "seeds": list(seeds), "epochs": [1],
            "prompt_variants": ["default"], "baseline_variants": [], "output_dir": str(tmp_path / "sweeps"), **extra}
    path = tmp_path / f"{name}-{len(list(tmp_path.glob(name + '*.yaml')))}.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def _ftscale(*args, timeout=900):
    return subprocess.run([str(BIN / "ftscale"), *map(str, args)], cwd=ROOT, capture_output=True, text=True, timeout=timeout)


def test_a_sweep_killed_at_random_moments_ends_with_every_cell_done_once(embedded_model, tmp_path):
    path = _sweep(tmp_path)
    sweep, base = load_sweep(path)
    cells = expand(sweep, base)
    assert [(c.kind, c.n, c.seed) for c in cells] == [("base", 0, 1), ("train", 4, 1), ("train", 4, 2)]
    # another config of the same sweep (a changed override) is a grid of other cells: killed in turn
    other = _sweep(tmp_path, overrides={"train.learning_rate": 1e-4})
    other_cells = expand(*load_sweep(other))
    assert not {c.run_dir for c in cells} & {c.run_dir for c in other_cells}
    rng, kills, trial = random.Random(7), 0, 0
    while kills < 10:
        assert trial < 30, f"only {kills} kills landed in {trial} restarts"
        spec = path if (trial // 3) % 2 == 0 else other
        killed = kill_at_change(["sweep", spec], sweep.sweep_dir, rng.randint(1, 12))
        kills += killed
        print(f"restart {trial}: {'killed' if killed else 'finished'}", flush=True)
        trial += 1
        for cell in cells + other_cells:  # a cell's files never claim more than it finished
            if is_done(cell.run_dir, cell.key):
                assert completion.valid(cell.run_dir) is not None
                assert (cell.run_dir / "eval-default" / "completion.json").is_file()
    final = _ftscale("sweep", path)
    assert final.returncode == 0, final.stderr[-3000:]
    store = ResultsStore(sweep.sweep_dir / "results.db")
    assert store.integrity() == "ok"
    rows = [r for r in store.all() if r["key"] in {c.key for c in cells}]
    assert sorted(r["key"] for r in rows) == sorted(c.key for c in cells)
    assert all(r["status"] == "done" and r["completions"] == 1 for r in rows), rows
    store.close()
    for c in cells:
        assert (c.run_dir / "eval-default" / "scores.json").is_file()
        assert (c.run_dir / "adapter").is_dir() == (c.n > 0)
        # each record names its cell's config: nothing was carried over from the other grid
        assert completion.valid(c.run_dir)["inputs"] == train_inputs(c.cfg, c.n)

    status = _ftscale("sweep", path, "--status")
    assert "3 cells: 3 done, 0 running, 0 failed, 0 left" in status.stdout
    again = _ftscale("sweep", path)  # nothing left to do: no cell is run twice
    assert "3 done, 0 to run" in again.stdout

    report = _ftscale("report", sweep.sweep_dir)
    assert report.returncode == 0, report.stderr[-3000:]
    assert (sweep.sweep_dir / "report.html").is_file() and (sweep.sweep_dir / "report.md").is_file()
    # a run directory edited by hand so that its files disagree with their record is refused, naming it
    gens = cells[1].run_dir / "eval-default" / "generations.jsonl"
    gens.write_text(gens.read_text().splitlines(keepends=True)[0])
    refused = _ftscale("report", sweep.sweep_dir)
    assert refused.returncode == 2
    assert f"{gens.parent}: its files are not the ones its completion record names" in refused.stderr


def test_two_sweeps_started_at_once_on_one_folder_run_each_cell_once(embedded_model, tmp_path):
    """One writer per cell (ftscale/claims.py): two sweeps of one folder, and a third alone in another."""
    from ftscale.chatdata import sha256_file

    for folder in ("shared", "alone"):
        (tmp_path / folder).mkdir()
    # two cells: each sweep claims one first, then waits for the other's; no stop check (not under test here)
    shared, alone = (_sweep(tmp_path / f, sizes=(4,), overrides={"train.stop_check": 0}) for f in ("shared", "alone"))
    logs = [tmp_path / f"sweep-{i}.log" for i in range(3)]  # files, not pipes: one unread pipe would stall its writer
    procs = [subprocess.Popen([str(BIN / "ftscale"), "sweep", str(p)], cwd=ROOT, stdout=log.open("w"),
                              stderr=subprocess.STDOUT) for p, log in zip((shared, shared, alone), logs)]
    for proc in procs:
        proc.wait(timeout=1800)
    outs = [(log.read_text(), "") for log in logs]
    assert [p.returncode for p in procs] == [0, 0, 0], [out[-2000:] for out, _ in outs]
    # each of the two ran the cells it claimed, left the others to the other, and waited for them
    assert any("left to ftscale sweep on" in out for out, _ in outs[:2]), outs[0][0][-2000:]
    cells, reference = expand(*load_sweep(shared)), expand(*load_sweep(alone))
    assert len(cells) == len(reference) == 2
    for cell, ref in zip(cells, reference):
        state = json.loads((cell.run_dir / "cell.json").read_text())
        assert state["attempts"] == 1 and state["completions"] == 1, (cell.run_dir, state)  # run once
        assert is_done(cell.run_dir, cell.key)
        gens = [json.loads(line)["output"] for line in (cell.run_dir / "eval-default" / "generations.jsonl").open()]
        ref_gens = [json.loads(line)["output"] for line in (ref.run_dir / "eval-default" / "generations.jsonl").open()]
        assert gens == ref_gens  # the same answers as a sweep alone
        scores = json.loads((cell.run_dir / "eval-default" / "scores.json").read_text())["metrics"]
        assert scores == json.loads((ref.run_dir / "eval-default" / "scores.json").read_text())["metrics"]
        if cell.n:
            adapter = "adapter/adapter_model.safetensors"
            assert sha256_file(cell.run_dir / adapter) == sha256_file(ref.run_dir / adapter)


def test_a_failed_cell_is_recorded_and_the_others_go_on(embedded_model, tmp_path):
    # a prompted OpenAI reference whose endpoint refuses every request (a wrong key): its cell
    # fails, on any machine, while the local cell goes on
    reference = {"name": "gpt-4.1 prompted", "backend": "openai", "model": "gpt-4.1", "prompt_variant": "default"}
    with StandIn() as standin:
        standin.chat_refusal = "401"
        overrides = {"openai.base_url": standin.base_url}
        path = _sweep(tmp_path, sizes=(0,), seeds=(1,), overrides=overrides, references=[reference])
        out = _ftscale("sweep", path)
        assert out.returncode == 1, out.stderr[-2000:]  # finished, but a cell failed
        assert "1 done" in out.stdout and "1 failed" in out.stdout and "1 cell(s) failed" in out.stderr
        status = _ftscale("sweep", path, "--status").stdout
        assert "failed: gpt-4.1 prompted n=0 seed=1" in status and "2 of 2 requests failed" in status
        assert "Incorrect API key" in status
        assert not list((tmp_path / "sweeps" / "tiny" / "references").rglob("eval-*/completion.json"))

        standin.chat_refusal = None  # the endpoint works again: the rerun fills the failed cell only
        again = _ftscale("sweep", path)
        assert again.returncode == 0, again.stderr[-2000:]
        assert "1 done, 1 to run" in again.stdout

        standin.chat_faults = ["401", "401"]  # the first reference's two requests only
        second = reference | {"name": "gpt-4.1-mini prompted", "model": "gpt-4.1-mini"}
        path = _sweep(tmp_path, name="fast", sizes=(0,), seeds=(1,), overrides=overrides, references=[reference, second])
        out = _ftscale("sweep", path, "--fail-fast")
        assert out.returncode == 2 and "failed (--fail-fast)" in out.stderr
    store = ResultsStore.rebuild(tmp_path / "sweeps" / "fast" / "results.db", expand(*load_sweep(path)))
    assert [r["status"] for r in store.all()] == ["done", "failed", "pending"]  # stopped before the next cell


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
    assert [job.result() for job in jobs] == ["done"]  # ran in its own process, met us in the cell's files
    store = ResultsStore(tmp_path / "sweeps" / "jobs" / "results.db")
    (row,) = store.all()
    assert row["status"] == "done" and row["pid"] != os.getpid()
    store.close()

    # submitit's debug jobs run only when their result is asked for: submit asks, so the cell runs here
    path = _sweep(tmp_path, name="debugjobs", sizes=(0,), seeds=(1,))
    jobs = submit(path, "debug", timeout_min=10, partition=None, gpus_per_node=0, log=lambda *_: None)
    store = ResultsStore(tmp_path / "sweeps" / "debugjobs" / "results.db")
    (row,) = store.all()
    assert row["status"] == "done" and row["pid"] == os.getpid()

"""`ftscale run`: train every size, evaluate, report; a second run reuses what is finished."""

from __future__ import annotations

import json
import shutil
import subprocess

import pytest

from conftest import BIN, MAIN_CONFIG, ROOT

TINY = ["--num_train_examples", "[0, 8]", "--train.epochs", "1", "--eval.limit", "6", "--eval.max_new_tokens", "48"]


def _run(tmp_path, *extra):
    cmd = [str(BIN / "ftscale"), "run", str(MAIN_CONFIG), "--output_dir", str(tmp_path), *TINY, *extra]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout


@pytest.fixture(scope="module")
def one_job(tmp_path_factory, embedded_model):
    """A tiny run, one cell after the other: the reference both tests below read (and never change)."""
    out = tmp_path_factory.mktemp("one-job")
    _run(out)
    return out


def test_run_writes_summary_plot_and_resumes(tmp_path, one_job):
    shutil.copytree(one_job, tmp_path, dirs_exist_ok=True)  # the resumes below change the run: work on a copy
    exp = tmp_path / "formatting-smollm2-cpu"
    summary = (exp / "summary.md").read_text()
    assert "![scaling](scaling.png)" in summary
    assert (exp / "scaling.png").read_bytes()[:4] == b"\x89PNG"
    rows = json.loads((exp / "results.json").read_text())["rows"]
    # both sizes with the plain prompt, and the few-shot baseline for the base model only
    assert sorted((r["num_train_examples"], r["prompt_variant"]) for r in rows) == [
        (0, "default"), (0, "few_shot"), (8, "default")]
    for r in rows:
        assert r["n_eval"] == 6 and f"| {r['num_train_examples']} | 42 | hf | {r['prompt_variant']} |" in summary
        # cost next to quality: the machine's hourly price times measured training and evaluation time
        assert r["eval_requests"] == 6 and r["eval_wall_time_s"] > 0 and r["cost_per_1k_requests_usd"] > 0
        assert (r["training_cost_usd"] > 0) == (r["num_train_examples"] > 0)
        assert r["break_even_requests"] is not None  # against gpt-4.1, estimated from the base's few-shot tokens
    assert "## Cost next to quality" in summary and "checked 2025-06" in summary
    assert (exp / "cost.png").read_bytes()[:4] == b"\x89PNG"
    adapter = exp / "n0008-seed42" / "adapter" / "adapter_model.safetensors"
    before = adapter.stat().st_mtime_ns

    out = _run(tmp_path)  # nothing left to do: no training, no generation
    assert "n0008-seed42: training already done" in out and "trained" not in out.replace("training already", "")
    assert adapter.stat().st_mtime_ns == before

    out = _run(tmp_path, "--train.learning_rate", "1e-4")  # a changed config is not silently reused
    assert "config changed since the last run" in out
    assert adapter.stat().st_mtime_ns != before


def test_two_jobs_train_and_answer_exactly_as_one(tmp_path, one_job):
    """`--jobs 2` runs the cells in two processes on half the cores each: the same adapter, byte for
    byte, the same answers and the same scores as one cell after the other. Its output, piped, is the
    progress view's plain lines: no redraw, no library's bar, each cell's end."""
    out = _run(tmp_path, "--jobs", "2")
    assert "\r" not in out and "\x1b" not in out and "{'loss'" not in out and "Loading weights" not in out
    assert "] n0008-seed42: training" in out and "] n0000-seed42: done" in out and "2 of 2 cells finished" in out
    assert (tmp_path / "formatting-smollm2-cpu" / "logs" / "n0008-seed42.log").is_file()
    one, two = one_job / "formatting-smollm2-cpu", tmp_path / "formatting-smollm2-cpu"
    adapter = "n0008-seed42/adapter/adapter_model.safetensors"
    assert (one / adapter).read_bytes() == (two / adapter).read_bytes()
    generations = sorted(p.relative_to(one) for p in one.rglob("generations.jsonl"))
    assert len(generations) == 3  # the base with both prompts, the adapter
    for g in generations:
        answers = [[json.loads(line)["output"] for line in (d / g).read_text().splitlines()] for d in (one, two)]
        assert answers[0] == answers[1], g
    rows = [json.loads((d / "results.json").read_text())["rows"] for d in (one, two)]
    scores = [sorted((r["num_train_examples"], r["prompt_variant"], r["format_ok"], r["answer_correct"]) for r in rs)
              for rs in rows]
    assert scores[0] == scores[1] and len(scores[1]) == 3


def test_jobs_below_one_are_refused(tmp_path):
    cmd = [str(BIN / "ftscale"), "run", str(MAIN_CONFIG), "--output_dir", str(tmp_path), "--jobs", "0"]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and "--jobs 0: give 1 or more" in proc.stderr, proc.stderr[-2000:]
    assert not any(tmp_path.iterdir())

"""The OpenAI side against a local stand-in of the service (tests/openai_standin.py), driven by
the real `openai` client: a job's whole life, a refused job, a resumed launcher, faults during
evaluation, and the API key written nowhere."""

from __future__ import annotations

import json
import math
import subprocess

import pytest

from ftscale.chatdata import nested_subset, read_jsonl
from ftscale.config import load_config
from ftscale.errors import FtscaleError
from ftscale.eval.backends import Request, Sampling, make_backend
from ftscale.train import openai_ft

from conftest import BIN, MAIN_CONFIG, ROOT
from openai_standin import StandIn

KEY = "sk-ftscale-TEST-KEY-7f3a9c"  # recognisable, so the tests can look for it everywhere


@pytest.fixture
def standin(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    with StandIn() as s:
        yield s


def _cfg(standin, tmp_path, n=20):
    return load_config(MAIN_CONFIG, {"num_train_examples": str(n), "openai.base_url": standin.base_url,
                                     "openai.api_key_env": "OPENAI_API_KEY",  # the stand-in plays OpenAI: pair the key
                                     "openai.poll_interval_s": "0.01", "openai.epochs": "2",
                                     "output_dir": str(tmp_path)})


def test_a_whole_job(standin, tmp_path):
    cfg = _cfg(standin, tmp_path)
    run_dir = openai_ft.run_dir_for(cfg, 20)
    state = openai_ft.launch(cfg, 20, run_dir, yes=True, log=lambda *_: None)
    assert state["status"] == "succeeded" and state["fine_tuned_model"].startswith("ft:gpt-4.1-mini")
    job = standin.jobs[state["job_id"]]
    assert job["method"] == {"type": "supervised", "supervised": {"hyperparameters": {
        "n_epochs": 2, "batch_size": "auto", "learning_rate_multiplier": "auto"}}}
    assert job["seed"] == 42 and job["suffix"] == "ftscale-n20"
    # the uploaded file is the same nested subset a local 20-example run trains on
    uploaded = [json.loads(line) for line in open(run_dir / "train.jsonl")]
    assert uploaded == nested_subset(read_jsonl(cfg.data.train, "train"), 20, cfg.data.seed)
    assert standin.files[state["file_id"]]["purpose"] == "fine-tune"
    metrics = json.loads((run_dir / "train_metrics.json").read_text())
    assert metrics["fine_tuned_model"] == state["fine_tuned_model"] and metrics["trained_tokens"] == 20_000
    recorded = json.loads((run_dir / "openai_job.json").read_text())
    assert [e["message"] for e in recorded["events"]][-1] == "The job has successfully completed"
    assert len({e["id"] for e in recorded["events"]}) == len(recorded["events"])  # each event once


def test_a_refused_job_says_why_and_what_to_do(standin, tmp_path):
    standin.refuse_jobs = True
    cfg = _cfg(standin, tmp_path)
    with pytest.raises(FtscaleError) as e:
        openai_ft.launch(cfg, 20, openai_ft.run_dir_for(cfg, 20), yes=True, log=lambda *_: None)
    msg = str(e.value)
    assert "not available for your organization" in msg and "winding down self-serve fine-tuning" in msg
    assert "--model ft:" in msg and "--openai.base_url" in msg
    assert not standin.jobs


def test_an_interrupted_launcher_follows_the_same_job(standin, tmp_path, monkeypatch):
    cfg = _cfg(standin, tmp_path)
    run_dir = openai_ft.run_dir_for(cfg, 20)
    real_follow = openai_ft.follow

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(openai_ft, "follow", interrupted)
    with pytest.raises(KeyboardInterrupt):
        openai_ft.launch(cfg, 20, run_dir, yes=True, log=lambda *_: None)
    monkeypatch.setattr(openai_ft, "follow", real_follow)
    messages = []
    state = openai_ft.launch(cfg, 20, run_dir, yes=True, log=messages.append)
    assert messages[0].startswith("resuming job ftjob-0001")
    assert len(standin.jobs) == 1 and len(standin.files) == 1 and state["status"] == "succeeded"


def test_the_key_can_come_from_a_file_the_user_names(standin, tmp_path, monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY")
    key_file = tmp_path / "openai.key"
    key_file.write_text(KEY + "\n")
    monkeypatch.setenv("OPENAI_API_KEY_FILE", str(key_file))
    state = openai_ft.launch(_cfg(standin, tmp_path, n=10), 10, tmp_path / "job", yes=True, log=lambda *_: None)
    backend = make_backend("openai", model=state["fine_tuned_model"], base_url=standin.base_url,
                           api_key_env="OPENAI_API_KEY", progress=False)
    (gen,) = backend.generate([Request("a", [{"role": "user", "content": "hi"}])], Sampling())
    assert gen.error is None and standin.auth_headers and set(standin.auth_headers) == {f"Bearer {KEY}"}
    monkeypatch.setenv("OPENAI_API_KEY_FILE", str(tmp_path / "missing.key"))
    with pytest.raises(FtscaleError, match="OPENAI_API_KEY_FILE=.*missing.key: cannot read a key"):
        openai_ft.launch(_cfg(standin, tmp_path, n=10), 10, tmp_path / "job2", yes=True, log=lambda *_: None)


def test_faults_lose_and_duplicate_no_evaluation_record(standin):
    standin.chat_faults = ["429", "500", "drop", "slow", "500"]
    backend = make_backend("openai", model="ft:gpt-4.1-mini:org-standin:x:0001", base_url=standin.base_url,
                           concurrency=2, max_retries=4, backoff_s=0.05, timeout_s=1.0, progress=False)
    requests = [Request(f"q{i}", [{"role": "user", "content": "x" * (i + 1)}]) for i in range(8)]
    gens = backend.generate(requests, Sampling(max_new_tokens=32))
    assert len(gens) == 8 and all(g.error is None for g in gens)
    assert [json.loads(g.text)["answer"] for g in gens] == [i + 1 for i in range(8)]  # each in its own place
    assert sum(g.extra["attempts"] - 1 for g in gens) == 5  # every fault was retried once, nothing more
    assert all(g.output_tokens > 0 and g.input_tokens > 0 and g.ttft_s is not None for g in gens)


def test_exhausted_retries_are_recorded_as_failures(standin):
    standin.chat_faults = ["500"] * 3
    backend = make_backend("openai", model="m", base_url=standin.base_url, max_retries=2, backoff_s=0.01, progress=False)
    (gen,) = backend.generate([Request("a", [{"role": "user", "content": "hi"}])], Sampling())
    assert gen.finish_reason == "error" and "InternalServerError" in gen.error and gen.extra["attempts"] == 3


def test_the_key_is_written_nowhere_and_the_report_shows_openai_beside_local(standin, tmp_path):
    cfg_path = tmp_path / "exp.yaml"
    cfg_path.write_text(MAIN_CONFIG.read_text().replace("output_dir: runs", f"output_dir: {tmp_path / 'runs'}"))
    common = ["--config", str(cfg_path), "--openai.base_url", standin.base_url, "--openai.api_key_env", "OPENAI_API_KEY",
              "--openai.poll_interval_s", "0.01"]

    def ftscale(*args):
        proc = subprocess.run([str(BIN / "ftscale"), *args], cwd=ROOT, capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr[-2000:]
        return proc

    outputs = [ftscale("train", "--backend", "openai", "--yes", *common, "--num_train_examples", "12")]
    exp = tmp_path / "runs" / "formatting-smollm2-cpu"
    job_dir = exp / "openai-gpt-4.1-mini-2025-04-14-n0012-seed42"
    ft_model = json.loads((job_dir / "openai_job.json").read_text())["fine_tuned_model"]
    standin.chat_faults = ["500"]  # an error path too: exceptions must not carry the key
    for model, variant in ((ft_model, "default"), ("gpt-4.1-mini-2025-04-14", "few_shot")):
        outputs.append(ftscale("eval", "--backend", "openai", *common, "--base-url", standin.base_url,
                               "--api-key-env", "OPENAI_API_KEY", "--model", model, "--variant", variant, "--eval.limit", "4"))
    outputs.append(ftscale("report", str(exp)))
    # the fine-tune is scored in its job's directory, the prompted model in a cell of its own
    assert (job_dir / "eval-openai-default" / "scores.json").is_file()
    rows = {(r["num_train_examples"], r["model"], r["prompt_variant"]): r
            for r in json.loads((exp / "results.json").read_text())["rows"]}
    assert set(rows) == {(12, ft_model, "default"), (0, "gpt-4.1-mini-2025-04-14", "few_shot")}
    assert {r["backend"] for r in rows.values()} == {"openai gpt-4.1-mini-2025-04-14"}
    summary = (exp / "summary.md").read_text()
    assert "| 12 | 42 | openai gpt-4.1-mini-2025-04-14 | default | 4 |" in summary
    assert "estimated training cost: $" in outputs[0].stdout and "prices checked 2025-06" in outputs[0].stdout

    # cost next to quality, at the price table's prices: the fine-tune's 12,000 trained tokens at
    # $5/1M, its requests at fine-tuned prices ($0.80 in, $3.20 out), the prompted model at $0.40/$1.60
    ft, prompted = rows[(12, ft_model, "default")], rows[(0, "gpt-4.1-mini-2025-04-14", "few_shot")]
    assert ft["training_cost_usd"] == pytest.approx(12_000 * 5.00 / 1e6) and prompted["training_cost_usd"] == 0
    assert ft["cost_per_1k_requests_usd"] == pytest.approx(
        1000 * (ft["mean_input_tokens"] * 0.80 + ft["mean_output_tokens"] * 3.20) / 1e6)
    assert prompted["cost_per_1k_requests_usd"] == pytest.approx(
        1000 * (prompted["mean_input_tokens"] * 0.40 + prompted["mean_output_tokens"] * 1.60) / 1e6)
    assert "Prices: `configs/prices.yaml`, checked 2025-06" in summary and (exp / "cost.png").is_file()
    # against the prompted model as the reference, measured: break-even where the fine-tune gets cheaper per request
    outputs.append(ftscale("report", str(exp), "--reference-model", "gpt-4.1-mini"))
    rows = {r["model"]: r for r in json.loads((exp / "results.json").read_text())["rows"]}
    ft, prompted = rows[ft_model], rows["gpt-4.1-mini-2025-04-14"]
    saving = (prompted["cost_per_1k_requests_usd"] - ft["cost_per_1k_requests_usd"]) / 1000
    assert prompted["break_even_requests"] is None  # the reference itself
    assert ft["break_even_requests"] == (math.ceil(ft["training_cost_usd"] / saving) if saving > 0 else "never")

    assert f"Bearer {KEY}" in standin.auth_headers  # the key was used...
    written = [p for p in (tmp_path / "runs").rglob("*") if p.is_file()]
    assert len(written) >= 10
    for path in written:  # ...and is nowhere on disk or in any output
        assert KEY not in path.read_text(errors="replace"), path
    for p in outputs:
        assert KEY not in p.stdout + p.stderr

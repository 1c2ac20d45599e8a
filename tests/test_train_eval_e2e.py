"""End to end on the embedded model: a real LoRA run, real generation, real scores."""

from __future__ import annotations

import json

import yaml

from ftscale.chatdata import nested_subset, read_jsonl, sha256_records
from ftscale.config import load_config
from ftscale.eval.backends import Sampling, make_backend
from ftscale.eval.evaluate import evaluate, rescore
from ftscale.eval.tasks import get_task

from conftest import MAIN_CONFIG


def test_sft_writes_a_complete_run_directory(trained_run):
    assert (trained_run / "adapter" / "adapter_config.json").is_file()
    assert (trained_run / "adapter" / "adapter_model.safetensors").is_file()
    metrics = json.loads((trained_run / "train_metrics.json").read_text())
    assert metrics["trained"] and metrics["num_train_examples"] == 24
    assert metrics["steps"] == 9  # 24 examples / batch 8 x 3 epochs
    assert metrics["train_tokens"] > 24 * 3 * 40 and metrics["train_tokens_per_s"] > 0
    assert metrics["peak_memory_mb"] > 100 and metrics["wall_time_s"] > 0
    assert {"torch", "transformers", "trl", "peft"} <= set(metrics["versions"])
    # the adapter was trained on exactly the nested subset the config names
    cfg = yaml.safe_load((trained_run / "config.yaml").read_text())
    assert cfg["num_train_examples"] == 24 and cfg["train"]["epochs"] == 3
    pool = read_jsonl(cfg["data"]["train"], "train")
    assert metrics["subset_sha256"] == sha256_records(nested_subset(pool, 24, cfg["data"]["seed"]))
    losses = [json.loads(line)["loss"] for line in open(trained_run / "loss.jsonl")]
    assert len(losses) == 9 and losses[-1] < losses[0]
    assert (trained_run / "loss.png").read_bytes()[:4] == b"\x89PNG"
    # only the final artefacts remain: no temporary or half-written files
    assert not [p for p in trained_run.rglob("*") if p.name.startswith(".")]


def test_trained_adapter_formats_better_than_base(trained_run, tmp_path):
    cfg = load_config(MAIN_CONFIG)
    task = get_task("formatting")
    examples = read_jsonl(cfg.data.eval, "eval")[:24]
    pool = read_jsonl(cfg.data.train, "train")
    sampling = Sampling(max_new_tokens=96)
    scores = {}
    for name, adapter in (("base", None), ("lora", str(trained_run / "adapter"))):
        backend = make_backend("hf", model=cfg.model, adapter=adapter, batch_size=24, progress=False)
        scores[name] = evaluate(task, examples, pool, backend, sampling, "default", tmp_path / name)
        # every score can be recomputed from the generations file alone
        assert rescore(tmp_path / name / "generations.jsonl", task) == scores[name]
    assert scores["lora"]["metrics"]["format_ok"] > scores["base"]["metrics"]["format_ok"], scores
    records = [json.loads(line) for line in open(tmp_path / "lora" / "generations.jsonl")]
    assert [r["id"] for r in records] == [e["id"] for e in examples]
    for r in records:
        assert r["output_tokens"] >= 1 and r["input_tokens"] > 10
        assert 0 < r["ttft_s"] <= r["latency_s"]
        assert r["backend"] == "hf" and r["sampling"]["temperature"] == 0.0

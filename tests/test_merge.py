"""Merging an adapter into its base gives a plain checkpoint that answers like the adapter."""

from __future__ import annotations

import json

from ftscale.chatdata import read_jsonl
from ftscale.eval.backends import Request, Sampling, make_backend
from ftscale.train.merge import merge


def test_merged_checkpoint_answers_like_the_adapter(trained_run, tmp_path):
    default = merge(trained_run, tmp_path / "merged-bf16")
    config = json.loads((default / "config.json").read_text())
    assert config["model_type"] == "llama" and config["dtype"] == "bfloat16"  # the base checkpoint's dtype
    assert (default / "model.safetensors").is_file() and (default / "tokenizer.json").is_file()
    assert not (default / "adapter_config.json").exists()
    merged = merge(trained_run, tmp_path / "merged-fp32", dtype="float32")
    examples = read_jsonl("data/formatting/eval.jsonl", "eval")[:8]
    requests = [Request(e["id"], e["messages"]) for e in examples]
    sampling = Sampling(max_new_tokens=64)
    # fp32 on both sides and fp32 merged weights: only the order of the additions differs
    lora = make_backend("hf", model="smollm2-135m", adapter=str(trained_run / "adapter"), dtype="float32", progress=False)
    plain = make_backend("hf", model=str(merged), dtype="float32", progress=False)
    same = sum(a.text == b.text for a, b in zip(lora.generate(requests, sampling), plain.generate(requests, sampling)))
    assert same >= 7, same


def test_merged_beside_writes_once_next_to_the_run(trained_run):
    from ftscale.train.merge import merged_beside

    first = merged_beside(trained_run / "adapter")
    assert first == trained_run / "merged" and (first / "model.safetensors").is_file()
    stamp = (first / "model.safetensors").stat().st_mtime_ns
    assert merged_beside(trained_run) == first  # a run directory works too, and nothing is merged again
    assert (first / "model.safetensors").stat().st_mtime_ns == stamp

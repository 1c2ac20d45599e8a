"""`ftscale bench train` on the embedded model: a real training step measured, and its FLOPs count
checked against the architecture's own numbers."""

from __future__ import annotations

import json
import subprocess

from transformers import AutoConfig

from ftscale.models import resolve

from conftest import BIN, ROOT


def test_bench_train_measures_tokens_per_second_and_mfu(embedded_model, tmp_path):
    out = tmp_path / "bench.json"
    cmd = [str(BIN / "ftscale"), "bench", "train", "--model", embedded_model, "--random-init", "--seq-len", "64",
           "--batch", "2", "--steps", "2", "--warmup", "1", "--peak-tflops", "1.5", "--output", str(out)]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    r = json.loads(out.read_text())
    assert r["steps_measured"] == 2 and len(r["step_time_s_all"]) == 3  # warmup step run, not counted
    assert r["train_tokens_per_s"] == 2 * 64 / r["step_time_s_median"]
    # the matmul weights from the architecture itself: q, k, v, o, gate, up, down per layer, and the LM head
    c = AutoConfig.from_pretrained(resolve(embedded_model))
    kv = c.num_key_value_heads * (c.hidden_size // c.num_attention_heads)
    per_layer = 2 * c.hidden_size * c.hidden_size + 2 * c.hidden_size * kv + 3 * c.hidden_size * c.intermediate_size
    assert r["frozen_matmul_params"] == c.num_hidden_layers * per_layer + c.hidden_size * c.vocab_size
    r16 = 16  # the main config's LoRA rank, on every linear layer of the decoder
    adapters = c.num_hidden_layers * r16 * (2 * (c.hidden_size + c.hidden_size) + 2 * (c.hidden_size + kv)
                                            + 3 * (c.hidden_size + c.intermediate_size))
    assert r["adapter_params"] == adapters
    assert r["flops_per_token"] == 4 * r["frozen_matmul_params"] + 6 * adapters + 12 * c.num_hidden_layers * c.hidden_size * 64
    assert r["mfu"] == r["achieved_tflops"] / 1.5 and r["achieved_tflops"] == r["flops_per_token"] * r["train_tokens_per_s"] / 1e12
    assert r["peak_memory_gb"] > 0 and "tokens/s" in proc.stdout and "MFU" in proc.stdout

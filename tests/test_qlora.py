"""QLoRA on the CPU, end to end: the shipped QLoRA experiment (shortened) trains on the 4-bit base,
evaluates there in-process, trains the plain LoRA beside it, evaluates the adapter on the bf16 base and
merged both ways, and its summary reports all of it; the default merge answers like the adapter it came
from. (Serving the merge through vLLM is measured by the benchmark in docs/benchmarks.md, not here:
a second vLLM server costs minutes.)"""

from __future__ import annotations

import json

import pytest
import yaml

from ftscale.config import load_config
from ftscale.errors import ConfigError, FtscaleError

from conftest import ROOT

QLORA_CONFIG = ROOT / "configs" / "experiments" / "formatting-smollm2-qlora-cpu.yaml"
# short: 16 examples, 2 steps, 8 eval items, answers (and the merges' stop checks) cut at 48 tokens; no vLLM
# (see the module's docstring)
SHORT = {"num_train_examples": "[16]", "train.epochs": "1", "eval.limit": "8", "eval.baseline_variants": "[]",
         "eval.max_new_tokens": "48", "qlora.serve_merged": "false", "train.stop_check": "0"}
# The default merge (into the dequantized nf4 weights) against the adapter on the 4-bit base it trained on:
# the same weights but for the bf16 rounding of the merged sum. Fed the adapter's own answers, the merge
# chooses the same next token almost everywhere (228 of 233, 0.979, on 2026-12-07; the merge into the
# original bf16 weights 190 of 233, 0.815, as the adapter on the bf16 base: 188). Whole greedy answers are a
# harsher measure (one early near-tie changes the rest): 3 of 8 identical, the other merge 0 of 8.
MERGE_TOKEN_AGREEMENT_MIN = 0.95


@pytest.fixture(scope="module")
def qlora_experiment(embedded_model, tmp_path_factory):
    from ftscale.run_experiment import run_experiment

    out = tmp_path_factory.mktemp("qlora")
    cfg = load_config(QLORA_CONFIG, SHORT | {"output_dir": str(out)})
    summary = run_experiment(cfg, log=lambda *_: None)
    return cfg, summary.parent


def test_the_shipped_qlora_experiment_loads_as_a_study_of_4bit_cells():
    cfg = load_config(QLORA_CONFIG)
    assert cfg.train.quantization == "4bit" and cfg.qlora.lora_beside and cfg.qlora.serve_merged
    assert set(cfg.qlora.merges) == {"original", "dequantized"}
    assert "qlora" not in yaml.safe_load(cfg.cell_yaml(100))  # what is measured beside a cell is not part of it
    with pytest.raises(ConfigError, match="qlora: the QLoRA study needs train.quantization: 4bit"):
        load_config(QLORA_CONFIG, {"train.quantization": "none"})


def test_qlora_trains_on_the_cpu_and_is_evaluated_on_its_4bit_base(qlora_experiment):
    cfg, exp = qlora_experiment
    cell = exp / "n0016-seed42"
    metrics = json.loads((cell / "train_metrics.json").read_text())
    assert metrics["trained"] and metrics["steps"] == 2 and metrics["versions"]["bitsandbytes"] == "0.50.2"
    assert yaml.safe_load((cell / "config.yaml").read_text())["train"]["quantization"] == "4bit"
    record = json.loads((cell / "eval-default" / "completion.json").read_text())
    scores = json.loads((cell / "eval-default" / "scores.json").read_text())
    assert scores["n"] == 8 and scores["failed"] == 0
    # the in-process evaluation ran on the 4-bit base, and says so in what identifies it
    from ftscale import completion
    from ftscale.cellrunner import hf_answerer

    assert hf_answerer(cfg, cell / "adapter").identity["quantization"] == "4bit"
    assert record["inputs_sha256"] == completion.digest(
        next(j for j in _jobs(cfg, cell, hf_answerer(cfg, cell / "adapter"))).inputs)
    # the LoRA beside: the same size on the bf16 base, a training of its own
    twin = exp / "n0016-seed42-lora"
    assert yaml.safe_load((twin / "config.yaml").read_text())["train"]["quantization"] == "none"
    assert json.loads((twin / "train_metrics.json").read_text())["steps"] == 2


def _jobs(cfg, cell, answerer):
    from ftscale.cellrunner import eval_jobs
    from ftscale.chatdata import read_jsonl
    from ftscale.experiment import task_for

    pool, examples = read_jsonl(cfg.data.train, "train"), read_jsonl(cfg.data.eval, "eval")[:cfg.eval.limit]
    return eval_jobs(cfg, cell, task_for(cfg), pool, examples, ["default"], answerer)


def test_the_default_merge_answers_like_the_adapter_it_came_from(qlora_experiment):
    from ftscale.eval.parity import compare
    from ftscale.train.merge import MANIFEST, merge_target

    _, exp = qlora_experiment
    cell = exp / "n0016-seed42"
    assert merge_target(cell / "adapter") == "dequantized"  # a QLoRA adapter's default
    for into in ("original", "dequantized"):
        manifest = json.loads((cell / f"merged-{into}" / MANIFEST).read_text())
        assert manifest["into"] == into and manifest["dtype"] == "torch.bfloat16"
    agreement = json.loads((cell / "token-agreement.json").read_text())["variants"]["default"]
    default, original, on_bf16 = (agreement[k] for k in ("hf-merged-dequantized", "hf-merged-original", "hf-on-bf16"))
    assert default["total"] == original["total"] == on_bf16["total"] > 8 * 10  # every answered token of the 8 items
    share = {k: v["agree"] / v["total"] for k, v in agreement.items()}
    assert share["hf-merged-dequantized"] >= MERGE_TOKEN_AGREEMENT_MIN, share
    # the other merge is the bf16 base's weights: it answers like the adapter on that base, not on its own
    assert share["hf-merged-original"] < share["hf-merged-dequantized"] and default["max_logit_diff"] < 5, agreement
    identical = {into: compare(cell / "eval-default" / "generations.jsonl",
                               cell / f"eval-hf-merged-{into}-default" / "generations.jsonl", "format_ok")
                 for into in ("dequantized", "original")}
    assert identical["dequantized"].n == 8 and identical["dequantized"].identical >= identical["original"].identical
    # the other merge and the bf16 base were evaluated on the same items too
    for label in ("hf-merged-original", "hf-on-bf16"):
        assert json.loads((cell / f"eval-{label}-default" / "scores.json").read_text())["n"] == 8


def test_the_summary_shows_qlora_beside_lora_and_the_merge_table(qlora_experiment):
    _, exp = qlora_experiment
    text = (exp / "summary.md").read_text()
    beside = text.split("## QLoRA beside LoRA")[1].split("\n## ")[0]
    row = next(line for line in beside.splitlines() if line.startswith("| 16 |"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    # scores with intervals, their paired difference, identical answers, memory and tokens/s of each training
    assert "[" in cells[3] and "[" in cells[4] and "[" in cells[5] and "/8 = " in cells[6]
    memory = [float(v.replace(",", "")) for v in cells[7].split(" / ")]
    speed = [float(v) for v in cells[8].split(" / ")]
    assert all(v > 0 for v in memory + speed)
    merges = text.split("## Merging the QLoRA adapter")[1].split("\n## ")[0]
    for pair in ("(a) 4-bit base vs (b) bf16 base", "(a) 4-bit base vs (c) merged into original",
                 "(a) 4-bit base vs (c) merged into dequantized", "(b) bf16 base vs (c) merged into original"):
        assert pair in merges, pair
    row = next(line for line in merges.splitlines() if "| (a) 4-bit base vs (c) merged into dequantized |" in line)
    assert "(largest logit gap " in row  # the next-token agreement, beside the identical answers
    assert "## Train/serve parity" not in text  # nothing was evaluated through vLLM here


def test_merging_a_plain_lora_into_dequantized_weights_is_refused(trained_run, tmp_path):
    from ftscale.train.merge import merge, merge_target

    assert merge_target(trained_run / "adapter") == "original"
    with pytest.raises(FtscaleError, match="was not trained on a 4-bit base"):
        merge(trained_run, tmp_path / "merged", into="dequantized")
    assert not (tmp_path / "merged").exists()


def test_doctor_reports_bitsandbytes_usable_on_this_machine(tmp_path):
    """The check runs an nf4 layer on this machine's device (the CPU here); where bitsandbytes does not
    import, the line is broken, optional (QLoRA only), and says how to reinstall it."""
    import subprocess
    import sys

    import torch

    from ftscale import doctor

    check = doctor.check_bitsandbytes("==0.50.2")
    assert check.status == doctor.OK, check
    assert check.measured["nf4_on"] == ("cuda" if torch.cuda.is_available() else "cpu")
    assert 0 < check.measured["relative_error"] < doctor.NF4_MAX_ERROR
    code = ("import sys; sys.modules['bitsandbytes'] = None; from ftscale import doctor; "
            "c = doctor.check_bitsandbytes('==0.50.2'); print(c.status, c.required, c.fix)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.startswith("broken False") and "--force-reinstall" in proc.stdout  # installed, not importable

"""Train/serve parity in the experiment summary: one adapter evaluated in-process and through the
session's vLLM server. A deliberate chat-template mismatch on the in-process side is flagged, naming the
usual causes; the matched pair is not."""

from __future__ import annotations

import shutil

from ftscale.cellrunner import eval_jobs, hf_answerer, run_evals
from ftscale.chatdata import read_jsonl
from ftscale.config import load_config
from ftscale.eval.parity import IDENTICAL_MIN, compare
from ftscale.eval.report import write_report
from ftscale.experiment import task_for
from ftscale.serve.evaluate_on_vllm import FT, OnVLLM

from conftest import MAIN_CONFIG

# not SmolLM2's template: no system turn, no <|im_start|> markers, another turn format altogether
MISMATCHED = "{% for m in messages %}{{ m['role'] | upper }}: {{ m['content'] }}\n{% endfor %}ASSISTANT:"


def _evaluate(cfg, cell, answerer):
    task = task_for(cfg)
    pool, examples = read_jsonl(cfg.data.train, "train"), read_jsonl(cfg.data.eval, "eval")[:cfg.eval.limit]
    failures = run_evals(cell, eval_jobs(cfg, cell, task, pool, examples, ["default"], answerer), answerer, pool,
                         cfg.eval.few_shot_k, log=lambda *_: None)
    assert not failures, failures
    return task


def _parity_row(summary: str) -> str:
    section = summary.split("## Train/serve parity: in-process against vLLM")[1].split("\n## ")[0]
    rows = [line for line in section.splitlines() if line.startswith("| 24 |")]
    assert len(rows) == 1, section
    return rows[0]


def test_a_template_mismatch_is_flagged_and_a_matched_pair_is_not(trained_run, vllm_server, tmp_path):
    cfg = load_config(MAIN_CONFIG, {"eval.limit": "12"})
    matched = tmp_path / "matched" / "n0024-seed42"
    shutil.copytree(trained_run, matched)  # the session's run, its records with it; the original stays untouched
    task = _evaluate(cfg, matched, hf_answerer(cfg, matched / "adapter"))
    _evaluate(cfg, matched, OnVLLM(vllm_server).answerer(cfg, 4, lora=FT))
    write_report(matched.parent, task)
    row = _parity_row((matched.parent / "summary.md").read_text())
    assert "| hf | vllm |" in row and row.rstrip(" |").endswith("ok"), row

    template = tmp_path / "mismatched.jinja"
    template.write_text(MISMATCHED)
    wrong = load_config(MAIN_CONFIG, {"eval.limit": "12", "train.chat_template": str(template)})
    mismatched = tmp_path / "mismatched" / "n0024-seed42"
    shutil.copytree(trained_run, mismatched)
    _evaluate(wrong, mismatched, hf_answerer(wrong, mismatched / "adapter"))  # prompts formatted the wrong way
    shutil.copytree(matched / "eval-vllm-default", mismatched / "eval-vllm-default")  # the same served answers
    write_report(mismatched.parent, task)
    row = _parity_row((mismatched.parent / "summary.md").read_text())
    assert "**flagged**" in row and "the chat template" in row and "end-of-turn token" in row, row

    # the figures behind the two verdicts
    good = compare(matched / "eval-vllm-default" / "generations.jsonl",
                   matched / "eval-default" / "generations.jsonl", "format_ok")
    bad = compare(mismatched / "eval-vllm-default" / "generations.jsonl",
                  mismatched / "eval-default" / "generations.jsonl", "format_ok")
    assert good.n == bad.n == 12 and not good.flagged and bad.flagged
    assert bad.high < IDENTICAL_MIN < good.high and bad.identical < good.identical

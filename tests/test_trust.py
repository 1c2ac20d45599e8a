"""Results you can trust: a step is done only when its completion record names exactly its inputs.

`ftscale run` killed at seeded random moments (chosen by events: the k-th change in its folder,
so a faster machine kills at the same points of the work), with the config changed between some
restarts, ends with the scores of a clean run and never shows a result made under another config;
checkpoints never resume a training of another config; an endpoint that refuses every request
exits 1, caches nothing, and a later run with a working endpoint fills the cell.
"""

from __future__ import annotations

import json
import random
import subprocess
from pathlib import Path

from ftscale import completion
from ftscale.chatdata import read_jsonl, sha256_file
from ftscale.config import load_config, parse_overrides
from ftscale.eval.report import audit
from ftscale.eval.result_row import ResultRow
from ftscale.experiment import expected_inputs, load_probes, task_for

from conftest import BIN, MAIN_CONFIG, ROOT, kill_at_change
from openai_standin import StandIn

TINY = ["--num_train_examples", "[0, 4]", "--train.epochs", "1", "--train.batch_size", "4", "--eval.limit", "3",
        "--eval.max_new_tokens", "12", "--eval.baseline_variants", "[]"]
LR_A, LR_B = "3e-4", "1e-4"


def _args(out: Path, lr: str, *extra) -> list[str]:
    return [str(MAIN_CONFIG), "--output_dir", str(out), *TINY, "--train.learning_rate", lr, *extra]


def _ftscale(*args, timeout=900):
    return subprocess.run([str(BIN / "ftscale"), *map(str, args)], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout)


def _expected(out: Path, lr: str) -> dict[Path, str]:
    cfg = load_config(MAIN_CONFIG, parse_overrides(_args(out, lr)[1:]))
    pool = read_jsonl(cfg.data.train, "train")
    return expected_inputs(cfg, task_for(cfg), pool, read_jsonl(cfg.data.eval, "eval")[: cfg.eval.limit],
                           load_probes(cfg))


def _shown_rows_match(exp: Path, expected: dict[Path, str]) -> list[ResultRow]:
    """What a report of `exp` would show under `expected`, each row checked against it."""
    rows, _ = audit(exp, expected)
    for r in rows:
        folder = Path(r.generations).parent
        assert completion.valid(folder)["inputs_sha256"] == expected[folder], folder
        assert completion.valid(folder.parent)["inputs_sha256"] == expected[folder.parent], folder.parent
    return rows


def _scores(rows: list[dict]) -> dict:
    """The scores of results.json's rows, by size and prompt."""
    return {(r["num_train_examples"], r["prompt_variant"]): (r["format_ok"], r["answer_correct"]) for r in rows}


def test_run_killed_at_random_moments_with_config_changes_ends_as_a_clean_run(embedded_model, tmp_path):
    clean = _ftscale("run", *_args(tmp_path / "clean", LR_B))
    assert clean.returncode == 0, clean.stderr[-3000:]
    clean_exp = tmp_path / "clean" / "formatting-smollm2-cpu"
    clean_rows = json.loads((clean_exp / "results.json").read_text())["rows"]

    out = tmp_path / "faults"
    exp = out / "formatting-smollm2-cpu"
    expected = {lr: _expected(out, lr) for lr in (LR_A, LR_B)}
    rng, kills, trial = random.Random(13), 0, 0
    while kills < 10:
        assert trial < 30, f"only {kills} kills landed in {trial} restarts"
        lr = LR_A if (trial // 3) % 2 == 0 else LR_B  # the config changes every third restart
        killed = kill_at_change(["run", *_args(out, lr)], exp, rng.randint(1, 14))
        kills += killed
        print(f"restart {trial}: {'killed' if killed else 'finished'}", flush=True)
        trial += 1
        # after every kill: each record is whole, and nothing shown was made under the other config
        for rec_path in exp.rglob(completion.RECORD):
            assert completion.valid(rec_path.parent) is not None, rec_path
        if exp.is_dir():
            _shown_rows_match(exp, expected[lr])

    final = _ftscale("run", *_args(out, LR_B))
    assert final.returncode == 0, final.stderr[-3000:]
    rows = _shown_rows_match(exp, expected[LR_B])
    assert _scores([r.as_json() for r in rows]) == _scores(clean_rows)
    assert len(rows) == len(clean_rows)
    adapter = "n0004-seed42/adapter/adapter_model.safetensors"
    assert sha256_file(exp / adapter) == sha256_file(clean_exp / adapter)  # trained under the final config
    summary = (exp / "summary.md").read_text()
    assert "## Not shown" not in summary  # nothing stale left once the run finished


def test_checkpoints_of_another_config_are_not_resumed(embedded_model, tmp_path):
    args = ["--train.save_steps", "1", "--num_train_examples", "[8]"]
    first = _ftscale("run", *_args(tmp_path, LR_A, *args))
    assert first.returncode == 0, first.stderr[-3000:]
    cell = tmp_path / "formatting-smollm2-cpu" / "n0008-seed42"
    assert any((cell / "checkpoints").glob("checkpoint-*"))
    second = _ftscale("run", *_args(tmp_path, LR_B, *args))
    assert second.returncode == 0, second.stderr[-3000:]
    assert "config changed since the last run" in second.stdout
    metrics = json.loads((cell / "train_metrics.json").read_text())
    assert metrics["resumed_from"] is None  # trained from scratch, not from LR_A's last checkpoint
    rec = completion.valid(cell)
    assert rec["inputs"]["train"]["learning_rate"] == float(LR_B)


def test_an_endpoint_refusing_every_request_caches_nothing_and_a_working_one_fills_the_cell(tmp_path):
    out = tmp_path / "ref"
    args = ["eval", "--config", MAIN_CONFIG, "--backend", "openai", "--model", "gpt-4.1-mini", "--eval.limit", "3",
            "--output-dir", out]
    folder = out / "eval-openai-default"
    with StandIn() as standin:
        for refusal, text in (("401", "Incorrect API key"), ("404", "does not exist")):
            standin.chat_refusal = refusal
            proc = _ftscale(*args, "--base-url", standin.base_url)
            assert proc.returncode == 1, proc.stderr[-2000:]
            assert "3 of 3 requests failed" in proc.stderr and text in proc.stderr
            assert not (folder / "scores.json").exists() and completion.read(folder) is None
            assert json.loads((folder / "failed.json").read_text())["failed"] == 3
        standin.chat_refusal = None
        asked = len(standin.chat_requests)
        proc = _ftscale(*args, "--base-url", standin.base_url)
        assert proc.returncode == 0, proc.stderr[-2000:]
        assert len(standin.chat_requests) == asked + 3  # the failed evaluation was asked again
        scores = json.loads((folder / "scores.json").read_text())
        assert scores["n"] == 3 and scores["failed"] == 0 and completion.valid(folder) is not None
        assert not (folder / "failed.json").exists()
        again = _ftscale(*args, "--base-url", standin.base_url)
        assert again.returncode == 0 and len(standin.chat_requests) == asked + 3  # done: not asked again
        changed = _ftscale(*args, "--base-url", standin.base_url, "--eval.max_new_tokens", "9")
        assert changed.returncode == 0 and len(standin.chat_requests) == asked + 6  # new settings: asked again


def test_eval_honours_model_on_the_hf_backend(embedded_model, tmp_path):
    from ftscale.models import resolve

    other = resolve(embedded_model)  # the same weights named another way: a local directory
    proc = _ftscale("eval", "--config", MAIN_CONFIG, "--backend", "hf", "--model", other, "--eval.limit", "2",
                    "--eval.max_new_tokens", "4", "--output-dir", tmp_path / "other")
    assert proc.returncode == 0, proc.stderr[-2000:]
    (folder,) = (tmp_path / "other").glob("eval-hf-*-default")
    scores = json.loads((folder / "scores.json").read_text())
    assert scores["model"] == other and scores["backend"] == folder.name.removeprefix("eval-").removesuffix("-default")
    assert completion.valid(folder)["inputs"]["answerer"]["model"]["ref"] == other

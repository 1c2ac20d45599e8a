"""The sweep report's train/serve parity section: a sweep evaluated both in-process and through vLLM
(`eval_backend: [hf, vllm]`) pairs each evaluation with its twin and says what serving changed."""

from __future__ import annotations

import json

from ftscale.eval.sweep_report import write_sweep_report
from ftscale.eval.tasks import get_task


def _generations(path, outputs, scores):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps({"id": f"q{i}", "output": o, "error": None, "scores": {"format_ok": s}}) + "\n"
                            for i, (o, s) in enumerate(zip(outputs, scores))))
    return str(path)


def test_a_sweep_evaluated_both_ways_shows_train_serve_parity(tmp_path):
    """Each in-process evaluation is paired with its vLLM twin (same cell, prompt, temperature): identical
    answers counted item by item, the metric's paired difference, and a flag when they part."""
    from ftscale.eval.result_row import ResultRow

    def row(backend, cell, outputs, scores):
        gens = _generations(tmp_path / cell / f"eval-{backend}" / "generations.jsonl", outputs, scores)
        return ResultRow(system=f"smollm2-135m LoRA ({backend})", backend=backend, model="smollm2-135m",
                         num_train_examples=25, seed=42, prompt_variant="default", temperature=0.0, in_sweep=True,
                         run_dir=str(tmp_path / cell), generations=gens, n_eval=40,
                         metrics={"format_ok": sum(scores) / len(scores), "answer_correct": 0.0, "both": 0.0})
    same = ["{}"] * 40
    rows = [row("hf", "a", same, [1] * 40), row("vllm", "a", same[:38] + ["x", "y"], [1] * 38 + [0, 0]),
            row("hf", "b", same, [1] * 40), row("vllm", "b", ["z"] * 40, [0] * 40)]
    rows[2].run_dir = rows[3].run_dir = str(tmp_path / "b")
    _, md = write_sweep_report(tmp_path / "out", rows, get_task("formatting"), None, {})
    section = md.read_text().split("## Train/serve parity")[1].split("\n## ")[0]
    lines = [line for line in section.splitlines() if line.startswith("| smollm2")]
    assert len(lines) == 2
    assert "| 38/40 = 0.95 [" in lines[0] and "| ok |" in lines[0]
    assert "| 0/40 = 0.00 [" in lines[1] and "-1.000" in lines[1] and "**flagged**" in lines[1]
    # a sweep evaluated one way has no such section
    _, md = write_sweep_report(tmp_path / "one", rows[::2], get_task("formatting"), None, {})
    assert "Train/serve parity" not in md.read_text()


def test_a_qlora_cell_is_not_taken_for_a_parity_pair(tmp_path):
    """A QLoRA cell answers in-process from its 4-bit base and through vLLM from the bf16 base: not the same
    weights, so its two evaluations are no parity pair (a gap there is quantization, not the engine); the
    section says so, and a plain LoRA cell beside it is still compared."""
    from ftscale.eval.result_row import ResultRow

    def row(backend, cell, quantization, outputs):
        gens = _generations(tmp_path / cell / f"eval-{backend}" / "generations.jsonl", outputs, [1] * len(outputs))
        system = "smollm2-135m QLoRA" if quantization == "4bit" else "smollm2-135m LoRA"
        return ResultRow(system=f"{system} ({backend})", backend=backend, model="smollm2-135m", num_train_examples=25,
                         seed=42, prompt_variant="default", temperature=0.0, in_sweep=True, run_dir=str(tmp_path / cell),
                         quantization=quantization, generations=gens, n_eval=40, metrics={"format_ok": 1.0, "answer_correct": 0.0, "both": 0.0})
    rows = [row("hf", "lora", "none", ["{}"] * 40), row("vllm", "lora", "none", ["{}"] * 40),
            row("hf", "qlora", "4bit", ["{}"] * 40), row("vllm", "qlora", "4bit", ["z"] * 40)]
    _, md = write_sweep_report(tmp_path / "out", rows, get_task("formatting"), None, {})
    section = md.read_text().split("## Train/serve parity")[1].split("\n## ")[0]
    assert [line.split("|")[1].strip() for line in section.splitlines() if line.startswith("| smollm2")] == [
        "smollm2-135m LoRA"]
    assert "Not in this table: smollm2-135m QLoRA" in section and "bf16 base" in section
    # QLoRA alone: no pair left, no section
    _, md = write_sweep_report(tmp_path / "only", rows[2:], get_task("formatting"), None, {})
    assert "Train/serve parity" not in md.read_text()

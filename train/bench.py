"""`ftscale bench train`: train tokens/s, peak memory and model-FLOPs utilisation (MFU) of ftscale's
own LoRA/QLoRA training step (train/sft.py's model, LoRA and SFTConfig), on fixed-length batches of
random tokens so that every step does the same work.

    ftscale bench train --model llama-3.1-8b --random-init --seq-len 2048 --batch 1 [--train.quantization 4bit]

FLOPs per trained token of a LoRA step (the formula is explained in docs/benchmarks.md):

    4 N_frozen     frozen weights: the forward pass (2N) and the gradient w.r.t. their inputs (2N);
                   no gradient w.r.t. the weights themselves
  + 6 N_lora       the adapters: forward, input gradient and weight gradient
  + 12 L d s       attention scores and values, forward and backward (PaLM's convention, no causal discount)

N counts the weights of the matrix multiplies (every Linear, the LM head included; not the embedding
lookup). MFU = FLOPs per token x tokens/s / the GPU's dense bf16 peak (configs/gpus.yaml).
"""

from __future__ import annotations

import resource
import statistics
import time
from pathlib import Path

import yaml

from ftscale import paths
from ftscale.atomic import write_json
from ftscale.config import ExperimentConfig
from ftscale.errors import ConfigError
from ftscale.provenance import machine, versions


def matmul_parameters(model) -> tuple[int, int]:
    """(frozen, adapter) weights of the model's matrix multiplies; 4-bit layers by their logical shape."""
    import torch

    frozen = adapters = 0
    for name, module in model.named_modules():
        if not isinstance(module, torch.nn.Linear):  # bitsandbytes' Linear4bit is one too
            continue
        n = module.in_features * module.out_features
        if ".lora_" in name:
            adapters += n
        else:
            frozen += n
    return frozen, adapters


def flops_per_token(frozen: int, adapters: int, layers: int, d_model: int, seq_len: int) -> float:
    return 4 * frozen + 6 * adapters + 12 * layers * d_model * seq_len


def gpu_peak_tflops(gpu_name: str) -> tuple[float, str] | None:
    for entry in yaml.safe_load((paths.CONFIGS / "gpus.yaml").read_text()):
        if any(m in gpu_name for m in entry["match"]):
            return entry["peak_bf16_tflops"], entry["name"]
    return None


def _tokenizer(path: str):
    """The model's tokenizer; for an architecture whose files are not here (--random-init), the embedded
    model's: the batches are random token ids already, the trainer only asks it for a pad id."""
    from transformers import AutoTokenizer

    from ftscale.models import resolve

    try:
        return AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError):
        return AutoTokenizer.from_pretrained(resolve("smollm2-135m"))


class _StepClock:
    """Wall time of every optimizer step, synchronised with the GPU so that queued work is counted."""

    def __init__(self):
        from transformers import TrainerCallback
        import torch

        clock = self

        class Callback(TrainerCallback):
            def on_step_begin(self, args, state, control, **kw):
                if torch.cuda.is_available():
                    torch.cuda.synchronize()
                clock.start = time.perf_counter()

            def on_step_end(self, args, state, control, **kw):
                if torch.cuda.is_available():
                    torch.cuda.synchronize()
                clock.steps.append(time.perf_counter() - clock.start)

        self.steps: list[float] = []
        self.start = 0.0
        self.callback = Callback()


def run_train_benchmark(cfg: ExperimentConfig, seq_len: int, batch: int, steps: int = 10, warmup: int = 3,
                        random_init: bool = False, peak_tflops: float | None = None, out: Path | None = None) -> dict:
    import tempfile

    import torch
    from datasets import Dataset
    from trl import SFTTrainer

    from ftscale.models import resolve

    from .sft import check_hardware, load_model, lora_config, sft_config

    if steps < 1 or warmup < 0 or seq_len < 16 or batch < 1:
        raise ConfigError("bench train: --steps >= 1, --warmup >= 0, --seq-len >= 16 and --batch >= 1")
    check_hardware(cfg)
    path = resolve(cfg.model)
    model = load_model(cfg, path, random_init=random_init)
    vocab = model.config.vocab_size
    g = torch.Generator().manual_seed(0)
    rows = torch.randint(0, vocab, ((steps + warmup) * batch, seq_len), generator=g).tolist()
    dataset = Dataset.from_dict({"input_ids": rows})  # tokenized already: TRL trains on it as is
    clock = _StepClock()
    with tempfile.TemporaryDirectory(prefix="ftscale-bench-") as tmp:
        args = sft_config(cfg, Path(tmp), max_steps=steps + warmup, num_train_epochs=1, per_device_train_batch_size=batch,
                          gradient_accumulation_steps=1, max_length=seq_len, logging_steps=1, save_strategy="no",
                          disable_tqdm=True, completion_only_loss=False, packing=False, padding_free=False,
                          warmup_steps=0, dataloader_drop_last=True)
        trainer = SFTTrainer(model=model, args=args, train_dataset=dataset, peft_config=lora_config(cfg),
                             processing_class=_tokenizer(path), callbacks=[clock.callback])
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
        trainer.train()
    measured = clock.steps[warmup:]
    world = trainer.accelerator.num_processes
    tokens_per_step = batch * seq_len * world
    step_s = statistics.median(measured)
    tokens_per_s = tokens_per_step / step_s
    frozen, adapters = matmul_parameters(trainer.model)
    config = trainer.model.config
    per_token = flops_per_token(frozen, adapters, config.num_hidden_layers, config.hidden_size, seq_len)
    info = machine()
    peak_name = None
    if peak_tflops is None and info.get("gpu"):
        found = gpu_peak_tflops(info["gpu"])
        if found:
            peak_tflops, peak_name = found
    achieved = per_token * tokens_per_s / 1e12
    result = {
        "model": cfg.model, "random_init": random_init, "quantization": cfg.train.quantization,
        "precision": "bf16" if args.bf16 else "fp32", "attn_implementation": config._attn_implementation,
        "gradient_checkpointing": cfg.train.gradient_checkpointing, "use_liger_kernel": cfg.train.use_liger_kernel,
        "seq_len": seq_len, "batch_per_device": batch, "world_size": world, "steps_measured": len(measured),
        "warmup_steps": warmup, "step_time_s_median": step_s, "step_time_s_all": clock.steps,
        "train_tokens_per_s": tokens_per_s,
        "frozen_matmul_params": frozen, "adapter_params": adapters, "flops_per_token": per_token,
        "achieved_tflops": achieved, "peak_tflops": peak_tflops, "peak_source": peak_name or ("--peak-tflops" if peak_tflops else None),
        "mfu": achieved / peak_tflops if peak_tflops else None,
        "peak_memory_gb": (torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available()
                           else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20),
        "peak_memory_kind": "cuda_max_allocated" if torch.cuda.is_available() else "process_max_rss",
        "peak_reserved_gb": torch.cuda.max_memory_reserved() / 2**30 if torch.cuda.is_available() else None,
        "machine": info, "versions": versions(),
    }
    if out is not None and trainer.accelerator.is_main_process:
        write_json(out, result)
    return result


def summary_line(r: dict) -> str:
    mfu = f"MFU {r['mfu']:.1%} of {r['peak_tflops']:.0f} TFLOPS ({r['peak_source']})" if r["mfu"] is not None \
        else "MFU: no peak known for this machine (give --peak-tflops)"
    return (f"{r['model']}{' (random init)' if r['random_init'] else ''}, {'QLoRA' if r['quantization'] == '4bit' else 'LoRA'} "
            f"{r['precision']}, seq {r['seq_len']} x batch {r['batch_per_device']} x {r['world_size']} process(es): "
            f"{r['train_tokens_per_s']:,.0f} tokens/s, {r['achieved_tflops']:.2f} TFLOPS, {mfu}, "
            f"peak memory {r['peak_memory_gb']:.2f} GB ({r['peak_memory_kind']})")

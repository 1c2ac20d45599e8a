"""Train a LoRA (or QLoRA) adapter with TRL's SFTTrainer: parse, load, train, save.

    accelerate launch train/sft.py --config configs/experiments/formatting-smollm2-cpu.yaml \
        --num_train_examples 100 [--train.learning_rate 1e-4 ...]

The training set is the first N examples of a seeded shuffle of the pool (nested subsets), and
the loss is computed on the final assistant turn only. The same code trains on a CPU, QLoRA's
4-bit base included (bitsandbytes runs nf4 layers there).
"""

from __future__ import annotations

import importlib.util
import os
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

if __package__ in (None, ""):
    # Run as a script (accelerate launch train/sft.py): Python put train/ first on sys.path, where a
    # module such as train/openai_ft.py could shadow an installed package. Import from `ftscale` only.
    sys.path.pop(0)

import torch

from ftscale import completion, progress
from ftscale.atomic import atomic_dir, atomic_path, write_json, write_jsonl, write_text
from ftscale.chatdata import nested_subset, read_jsonl, sha256_file, sha256_records, to_prompt_completion
from ftscale.config import ExperimentConfig, load_config, parse_overrides, peft_lora_config, write_task_data
from ftscale.device import resolve_dtype
from ftscale.errors import ConfigError, FtscaleError, run_command
from ftscale.flags import Parser
from ftscale.models import architecture, check_for_training, resolve
from ftscale.provenance import git_commit, machine, versions
from ftscale.quantization import bnb_config
from ftscale.rundir import TRAIN_METRICS, cell_dir
from ftscale.stepinputs import train_inputs
from ftscale.train import divergence, stop_check, tracking
from ftscale.train.chat_template_check import (ADAPTER_TEMPLATE, REPORT, check_before_training, generation_eos_ids,
                                               print_report, use_template)
from ftscale.train.watchdog import DivergenceWatchdog


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ValueError:  # sys.modules holds None for it: imports of it are blocked, as good as not installed
        return False


def attn_implementation(cfg: ExperimentConfig) -> str:
    wanted = cfg.train.attn_implementation
    if wanted == "auto":
        return "flash_attention_2" if torch.cuda.is_available() and _installed("flash_attn") else "sdpa"
    return wanted


def check_hardware(cfg: ExperimentConfig) -> None:
    """Refuse what this machine cannot do before anything is loaded: say what is missing and what to install."""
    t, cuda = cfg.train, torch.cuda.is_available()
    tracking.check_installed(t.trackers)
    # bitsandbytes runs nf4 layers on CUDA and on the CPU alike (0.50.2, the qlora extra)
    if t.quantization == "4bit" and not _installed("bitsandbytes"):
        raise ConfigError("train.quantization: 4bit (QLoRA) needs bitsandbytes: pip install -e '.[qlora]' "
                          "(make setup installs it)")
    if t.attn_implementation in ("flash_attention_2", "flash_attention_3"):
        module = {"flash_attention_2": "flash_attn", "flash_attention_3": "flash_attn_interface"}[t.attn_implementation]
        if not cuda:
            raise ConfigError(f"train.attn_implementation: {t.attn_implementation} needs a CUDA GPU; use sdpa (or auto)")
        if not _installed(module):
            hint = ("pip install flash-attn --no-build-isolation" if module == "flash_attn"
                    else "build FlashAttention 3 from its hopper/ folder (H100/H200 only)")
            raise ConfigError(f"train.attn_implementation: {t.attn_implementation} needs the {module} package: {hint}")
    if t.use_liger_kernel:
        if not cuda:
            raise ConfigError("train.use_liger_kernel: Liger's kernels are Triton kernels for CUDA GPUs")
        if not _installed("liger_kernel"):
            raise ConfigError("train.use_liger_kernel: needs liger-kernel: pip install liger-kernel")
    # still CUDA only: PEFT's LoftQ computes on a "cuda" (or xpu) device it names itself, and paged
    # optimizers page their state through CUDA's unified memory
    if t.lora.init_lora_weights == "loftq" and not (cuda and _installed("bitsandbytes")):
        raise ConfigError("train.lora.init_lora_weights: loftq needs a CUDA GPU and bitsandbytes (PEFT's LoftQ "
                          "computes on the GPU): pip install -e '.[qlora]'; on a CPU use init_lora_weights: default "
                          "with train.quantization: 4bit (QLoRA)")
    if t.optim == "paged_adamw_8bit" and not (cuda and _installed("bitsandbytes")):
        raise ConfigError("train.optim: paged_adamw_8bit needs a CUDA GPU and bitsandbytes (paged optimizers page "
                          "through CUDA memory): pip install -e '.[qlora]'; on a CPU use adamw_torch_fused")
    # accelerate launch tells its processes what to set up through the environment
    if os.environ.get("ACCELERATE_USE_DEEPSPEED", "").lower() == "true" and not _installed("deepspeed"):
        raise ConfigError("the accelerate config asks for DeepSpeed, which is not installed: pip install deepspeed")
    if os.environ.get("ACCELERATE_USE_FSDP", "").lower() == "true" and not cuda:
        raise ConfigError("the accelerate config asks for FSDP, which ftscale runs on CUDA GPUs only; "
                          "on a CPU use configs/accelerate/cpu_ddp.yaml (data parallel)")


def load_model(cfg: ExperimentConfig, path: str, random_init: bool = False):
    """The base model as training wants it; out of memory says what to turn."""
    try:
        return _load_model(cfg, path, random_init)
    except torch.OutOfMemoryError:
        raise FtscaleError("out of GPU memory while loading the model: try --train.quantization 4bit (QLoRA), "
                           "a smaller model, or shard it with configs/accelerate/fsdp.yaml") from None


def sft_config(cfg: ExperimentConfig, output_dir: Path, **overrides):
    """TRL's SFTConfig from the experiment's `train` section (the benchmark overrides steps and logging)."""
    from trl import SFTConfig

    t = cfg.train
    return SFTConfig(**{
        "output_dir": str(output_dir), "seed": t.seed, "data_seed": t.seed,
        "num_train_epochs": t.epochs, "learning_rate": t.learning_rate, "per_device_train_batch_size": t.batch_size,
        "gradient_accumulation_steps": t.gradient_accumulation_steps, "lr_scheduler_type": t.lr_scheduler,
        "warmup_steps": t.warmup_ratio,  # transformers 5 reads a float below 1 as a ratio of all steps
        "weight_decay": t.weight_decay,
        "max_length": _max_length(cfg),
        "bf16": resolve_dtype(t.precision) == torch.bfloat16, "gradient_checkpointing": t.gradient_checkpointing,
        "logging_steps": t.logging_steps, "save_strategy": "no" if t.save_steps is None else "steps",
        "save_steps": t.save_steps or 500, "report_to": [], "completion_only_loss": True,
        # the watchdog must see a NaN/Inf loss; transformers otherwise logs the mean of the earlier ones
        "logging_nan_inf_filter": not t.watchdog.enabled,
        "use_cpu": not torch.cuda.is_available(), "disable_tqdm": False,
        "ddp_find_unused_parameters": False,  # a LoRA uses every adapter weight in each forward pass
        "padding_free": t.padding_free, "packing": t.packing, "packing_strategy": "bfd",
        "use_liger_kernel": t.use_liger_kernel, "optim": t.optim,
    } | overrides)


def _max_length(cfg: ExperimentConfig) -> int | None:
    # TRL truncates in its collator, which padding-free batching without packing bypasses: it
    # refuses a max_length there, so examples longer than max_length are kept whole
    t = cfg.train
    return None if t.padding_free and not t.packing else t.max_length


def lora_config(cfg: ExperimentConfig):
    return peft_lora_config(cfg.train.lora)


def _under_fsdp() -> bool:
    return os.environ.get("ACCELERATE_USE_FSDP", "").lower() == "true"  # set by accelerate launch


def load_kwargs(cfg: ExperimentConfig) -> dict:
    """from_pretrained's arguments for the training model."""
    # Weights load in fp32 on a CPU and bf16 mixed precision (autocast) computes there; on CUDA
    # they load in bf16 directly.
    dtype = resolve_dtype(cfg.train.precision) if torch.cuda.is_available() else torch.float32
    kwargs = {"dtype": dtype, "attn_implementation": attn_implementation(cfg)}
    if cfg.train.quantization == "4bit":
        kwargs["quantization_config"] = quant = bnb_config()
        kwargs["dtype"] = quant.bnb_4bit_quant_storage  # the unquantized rest in the storage dtype, as FSDP needs
        if not _under_fsdp():
            # one full copy per process (DDP or one GPU). Under FSDP no device_map, as PEFT's
            # FSDP-QLoRA guide loads it: FSDP places and shards the weights itself.
            from accelerate import PartialState

            where = PartialState().local_process_index if torch.cuda.is_available() else "cpu"
            kwargs["device_map"] = {"": where}
    return kwargs


def _load_model(cfg: ExperimentConfig, path: str, random_init: bool = False):
    from transformers import AutoModelForCausalLM

    kwargs = load_kwargs(cfg)
    dtype = kwargs["dtype"]
    if random_init:
        # the architecture with random weights: measure speed for any model without its weights
        config = architecture(cfg.model, path)
        if "quantization_config" not in kwargs:
            with torch.device("cuda" if torch.cuda.is_available() else "cpu"):  # initialise where it will train
                return AutoModelForCausalLM.from_config(config, dtype=dtype, attn_implementation=kwargs["attn_implementation"])
        # bitsandbytes quantizes while loading: write the random weights once, load them quantized
        with tempfile.TemporaryDirectory(prefix="ftscale-random-") as tmp:
            AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16).save_pretrained(tmp)
            return AutoModelForCausalLM.from_pretrained(tmp, **kwargs)
    return AutoModelForCausalLM.from_pretrained(path, **kwargs)


OUT_OF_MEMORY = ("out of GPU memory while training (per-device batch {batch}, max_length {length}). Turn one of: "
                 "--train.batch_size (halve it, and double --train.gradient_accumulation_steps to keep the effective "
                 "batch), --train.max_length, --train.gradient_checkpointing true, --train.quantization 4bit (QLoRA), "
                 "--train.padding_free true (no pad tokens); or shard the model with "
                 "configs/accelerate/fsdp.yaml on several GPUs")


def save_adapter(trainer, path: Path, keep: tuple[str, ...] = ()) -> None:
    """Every process takes part (FSDP and ZeRO-3 gather their shards), the main one writes; the
    adapter appears whole or not at all. `keep` names other files of the trainer's to keep with it."""
    partial = path.with_name(f".{path.name}.partial")
    trainer.save_model(str(partial))
    trainer.accelerator.wait_for_everyone()
    if trainer.accelerator.is_main_process:
        with atomic_dir(path) as tmp:
            for f in partial.iterdir():  # the adapter only: not the trainer's args or a tokenizer copy
                if f.name.startswith("adapter_") or f.name == "README.md" or f.name in keep:
                    shutil.move(str(f), tmp / f.name)
        shutil.rmtree(partial, ignore_errors=True)
    trainer.accelerator.wait_for_everyone()


def _replicas_identical(trainer) -> bool:
    """Data parallel: after training on different shards of the data, every process must hold the
    same adapter weights, or its gradients were not averaged."""
    params = [p.detach().float().flatten() for p in trainer.model.parameters() if p.requires_grad]
    mine = torch.cat(params).to(trainer.accelerator.device)
    everyone = trainer.accelerator.gather(mine.unsqueeze(0))
    return bool(torch.equal(everyone.min(0).values, everyone.max(0).values))


def _plot_loss(history: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [h["step"] for h in history if "loss" in h]
    fig, ax = plt.subplots(figsize=(5, 3.2))
    ax.plot(steps, [h["loss"] for h in history if "loss" in h], marker=".")
    ax.set_xlabel("step")
    ax.set_ylabel("training loss")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)


def _fresh_checkpoints(folder: Path, inputs_sha256: str) -> None:
    """Checkpoints resume only the training that wrote them: others are removed before training."""
    marker = folder / "inputs.sha256"
    if folder.is_dir() and (not marker.is_file() or marker.read_text().strip() != inputs_sha256):
        shutil.rmtree(folder)
    folder.mkdir(parents=True, exist_ok=True)
    write_text(marker, inputs_sha256 + "\n")


def train(cfg: ExperimentConfig, n: int, run_dir: Path) -> dict:
    """Train one cell; return its metrics. `n == 0` records the untrained base and trains nothing.

    Its completion record (ftscale/completion.py) is written last, naming the hash of the training's
    inputs and of the adapter it wrote; the old record is removed first, so an interrupted training
    leaves none."""
    pool = read_jsonl(cfg.data.train, "train")  # validate the whole file before any work
    subset = nested_subset(pool, n, cfg.data.seed)
    check_hardware(cfg)
    run_dir = Path(run_dir)
    inputs = train_inputs(cfg, n, pool)
    tokenizer, template = _checked_tokenizer(cfg, subset) if n > 0 else (None, None)
    # rank 0 of accelerate launch / torchrun (RANK); the process group does not exist yet here
    main_process = int(os.environ.get("RANK", "0")) == 0
    if main_process:
        completion.begin(run_dir)
        divergence.clear(run_dir)
        write_text(run_dir / "config.yaml", cfg.cell_yaml(n))
        tracking.prepare(cfg, run_dir, tracking.input_facts(inputs))
        if template is not None:
            print_report(template)
            write_json(run_dir / REPORT, {"before_training": template})
    base = {"num_train_examples": n, "seed": cfg.train.seed, "data_seed": cfg.data.seed, "model": cfg.model,
            "data_file": str(cfg.data.train), "data_sha256": sha256_file(cfg.data.train),
            "subset_sha256": sha256_records(subset), "git_commit": git_commit(), "versions": versions()}
    if n == 0:
        if main_process:
            write_json(run_dir / TRAIN_METRICS, base | {"trained": False})
            completion.finish(run_dir, "train", inputs, [TRAIN_METRICS])
        return base | {"trained": False}
    metrics = _fit(cfg, run_dir, subset, base, completion.digest(inputs), tokenizer, template)
    if main_process:
        tracking.log_run(run_dir, {f"train/{k}": metrics[k] for k in ("train_loss", "wall_time_s", "train_tokens_per_s")},
                         step=metrics["steps"])
        completion.finish(run_dir, "train", inputs,
                          [TRAIN_METRICS, "loss.jsonl", *completion.files_under(run_dir, "adapter")])
    return metrics


def _checked_tokenizer(cfg: ExperimentConfig, subset: list[dict]):
    """(the tokenizer training formats examples with, the report of its chat template's check);
    a template that is missing, fails on an example or leaves end-of-turn untrained is refused here,
    before anything is written or loaded."""
    from transformers import AutoTokenizer

    path = resolve(cfg.model)
    tokenizer = AutoTokenizer.from_pretrained(path)
    use_template(tokenizer, cfg.train.chat_template)
    report = check_before_training(tokenizer, subset, model=cfg.model, spec=cfg.train.chat_template,
                                   max_length=_max_length(cfg), eos_ids=generation_eos_ids(path))
    return tokenizer, report


def _fit(cfg: ExperimentConfig, run_dir: Path, subset: list[dict], base: dict, inputs_sha256: str, tokenizer,
         template: dict) -> dict:
    """TRL's SFTTrainer on the subset; the adapter, loss curve and metrics written into run_dir."""
    from datasets import Dataset
    from transformers.trainer_utils import get_last_checkpoint
    from trl import SFTTrainer

    path = resolve(cfg.model)
    model = load_model(cfg, path)
    t = cfg.train
    args = sft_config(cfg, run_dir / "checkpoints", **tracking.sft_options(cfg, run_dir))
    dataset = Dataset.from_list([to_prompt_completion(r) for r in subset])
    watchdog = DivergenceWatchdog(t.watchdog) if t.watchdog.enabled else None
    trainer = SFTTrainer(model=model, args=args, train_dataset=dataset, processing_class=tokenizer,
                         peft_config=lora_config(cfg),
                         callbacks=[*([watchdog] if watchdog else []), *progress.trainer_callbacks()] or None)
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    if trainer.accelerator.is_main_process:
        _fresh_checkpoints(run_dir / "checkpoints", inputs_sha256)
    trainer.accelerator.wait_for_everyone()
    resume = get_last_checkpoint(args.output_dir) if Path(args.output_dir).is_dir() else None
    start = time.perf_counter()
    try:
        result = trainer.train(resume_from_checkpoint=resume)
    except torch.OutOfMemoryError:
        raise FtscaleError(OUT_OF_MEMORY.format(batch=t.batch_size, length=t.max_length)) from None
    wall = time.perf_counter() - start
    if watchdog is not None and watchdog.tripped is not None:
        _stop_diverged(cfg, trainer, run_dir, watchdog.tripped, base)

    metrics = base | {
        "trained": True, "wall_time_s": wall, "train_runtime_s": result.metrics["train_runtime"],
        "train_loss": result.metrics["train_loss"], "steps": trainer.state.global_step,
        "epochs": t.epochs,
        # TRL counts the tokens it trains on (prompt and completion, no padding) in its logs
        "train_tokens": max((h.get("num_tokens", 0) for h in trainer.state.log_history), default=0),
        "resumed_from": resume, "machine": machine(),
        "peak_memory_mb": (torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available()
                           else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
        "peak_memory_kind": "cuda_allocated" if torch.cuda.is_available() else "process_max_rss",
        "trainable_parameters": sum(p.numel() for p in trainer.model.parameters() if p.requires_grad),
        "attn_implementation": trainer.model.config._attn_implementation,
        "world_size": trainer.accelerator.num_processes,
        "distributed_type": str(trainer.accelerator.distributed_type),
    }
    metrics["train_tokens_per_s"] = (metrics["train_tokens"] or 0) / result.metrics["train_runtime"]
    if trainer.accelerator.num_processes > 1 and not trainer.is_fsdp_enabled and not trainer.is_deepspeed_enabled:
        metrics["replicas_identical"] = _replicas_identical(trainer)
    save_adapter(trainer, run_dir / "adapter", keep=(ADAPTER_TEMPLATE,) if t.chat_template else ())
    _check_stopping(cfg, trainer, tokenizer, run_dir, template)
    if trainer.accelerator.is_main_process:
        _write_loss_curve(trainer.state.log_history, run_dir)
        write_json(run_dir / TRAIN_METRICS, metrics)
    return metrics


def _check_stopping(cfg: ExperimentConfig, trainer, tokenizer, run_dir: Path, template: dict) -> None:
    """The trained model's greedy answers to eval prompts must end their turn (a warning if not),
    recorded beside the pre-training check."""
    if trainer.accelerator.is_main_process and cfg.train.stop_check:
        if trainer.is_fsdp_enabled or trainer.is_deepspeed_enabled:
            after = stop_check.skipped("after training", "the model is sharded across processes; `ftscale merge` "
                                                         "checks the merged model")
        else:
            prompts = stop_check.eval_prompts(cfg.data.eval, cfg.train.stop_check)
            after = stop_check.check_model(trainer.model, tokenizer, prompts, cfg.eval.max_new_tokens, "after training")
            stop_check.print_summary(after)
        write_json(run_dir / REPORT, {"before_training": template, "after_training": after})
    trainer.accelerator.wait_for_everyone()


def _write_loss_curve(history: list[dict], run_dir: Path) -> None:
    write_jsonl(run_dir / "loss.jsonl", [h for h in history if "loss" in h])
    _plot_loss(history, run_dir / "loss.png")


def _stop_diverged(cfg: ExperimentConfig, trainer, run_dir: Path, tripped: dict, base: dict) -> None:
    """The watchdog stopped the training: keep the loss curve and the divergence record, save no
    adapter and no checkpoint to resume from, and raise (no completion record is written)."""
    t = cfg.train
    if trainer.accelerator.is_main_process:
        _write_loss_curve(trainer.state.log_history, run_dir)
        shutil.rmtree(run_dir / "checkpoints", ignore_errors=True)
        rec = divergence.write(run_dir, tripped, t.learning_rate, t.warmup_ratio, t.precision,
                               base | {"watchdog": t.watchdog.model_dump(mode="json")})
        tracking.log_run(run_dir, {"train/diverged_at_step": tripped["step"]}, step=tripped["step"])
    else:
        rec = tripped | {"advice": divergence.knobs(t.learning_rate, t.warmup_ratio, t.precision)}
    trainer.accelerator.wait_for_everyone()
    raise divergence.Diverged(f"{run_dir}: training {divergence.reason(rec)}")


def main(argv: list[str] | None = None) -> int:
    parser = Parser(description=__doc__.split("\n\n")[0],
                                     epilog="Any config key can be overridden: --section.key value")
    parser.add_argument("--config", required=True, type=Path, help="experiment YAML (configs/experiments/)")
    parser.add_argument("--output-dir", type=Path, help="run directory (default: <output_dir>/<name>/n<N>-seed<S>)")
    args, rest = parser.parse_known_args(argv)

    def command():
        cfg = load_config(args.config, parse_overrides(rest))
        write_task_data(cfg)  # a dataset its task names, written out for the training
        n = cfg.single_size()
        run_dir = args.output_dir or cell_dir(cfg.experiment_dir, n, cfg.train.seed)
        if n > 0:
            check_for_training(cfg)  # a wrong model or LoRA target: refused before anything is written
        metrics = train(cfg, n, run_dir)
        from accelerate import PartialState

        if metrics.get("trained") and PartialState().is_main_process:
            print(f"adapter saved to {run_dir / 'adapter'}: {metrics['steps']} steps, loss {metrics['train_loss']:.4f}, "
                  f"{metrics['train_tokens_per_s']:.0f} tokens/s, {metrics['wall_time_s']:.1f} s")

    return run_command(command)


if __name__ == "__main__":
    raise SystemExit(main())

"""The experiment config: one YAML file names every knob of a run; unknown keys are refused.

Overrides from the command line use dotted keys (`--train.learning_rate 1e-4`) and are validated
with the file, so a typo in either place is reported before any work starts.
"""

from __future__ import annotations

import difflib
import re
from pathlib import Path
from typing import Literal

import yaml
from pydantic import Field, PrivateAttr, field_validator, model_serializer, model_validator

from ftscale.data.formats import CANONICAL, Format, convert_file, converted_path
from ftscale.eval.task_types import Task
from ftscale.eval.tasks import get_task
from ftscale.eval.tasks.check import refuse_missing_references
from ftscale.train.chat_template_check import template_text

from . import paths
from .chatdata import read_jsonl
from .errors import ConfigError
from .modelspec import ModelSpec
from .strict import Strict, load_validated


# transformers' SchedulerType values across the pinned range (5.16.1-5.19), spelled out because
# importing transformers.trainer_utils takes 4 s, which every command that only reads a config (report,
# an OpenAI or vLLM evaluation) would pay; tests/test_config.py checks the list against transformers.
LR_SCHEDULERS = ("linear", "cosine", "cosine_with_restarts", "polynomial", "constant", "constant_with_warmup",
                 "inverse_sqrt", "reduce_lr_on_plateau", "cosine_with_min_lr", "cosine_warmup_with_min_lr",
                 "warmup_stable_decay", "greedy")


def _nearest(value: str, valid: list[str]) -> str:
    """`did you mean ...?` for a mistyped name, else the valid names."""
    close = difflib.get_close_matches(value, valid, n=3, cutoff=0.5)
    hint = f"did you mean {' or '.join(map(repr, close))}? " if close else ""
    return f"{hint}(valid: {', '.join(valid)})"


class LoraSpec(Strict):
    r: int = Field(16, ge=1, description="LoRA rank")
    alpha: int = Field(32, ge=1, description="LoRA alpha (scaling = alpha / r)")
    dropout: float = Field(0.05, ge=0.0, lt=1.0)
    target_modules: str | list[str] = Field(
        "all-linear", description="PEFT target modules: all-linear, a list of module names (q_proj, ...) or a "
                                  "regular expression over full module names; checked against the model before training")

    @field_validator("target_modules")
    @classmethod
    def _target_modules(cls, v: str | list[str]) -> str | list[str]:
        if isinstance(v, list):
            if not v or not all(name.strip() for name in v):
                raise ValueError("a list of module names must be non-empty and name no empty module")
            return v
        if v != "all-linear":
            try:
                re.compile(v)  # PEFT reads any other string as a regular expression
            except re.error as e:
                raise ValueError(f"not all-linear, a list of names or a valid regular expression ({e})") from None
        return v

    use_dora: bool = Field(False, description="DoRA: weight-decomposed LoRA (PEFT use_dora)")
    use_rslora: bool = Field(False, description="rank-stabilised LoRA: scaling alpha/sqrt(r) instead of alpha/r (PEFT use_rslora)")
    init_lora_weights: Literal["default", "gaussian", "pissa", "olora", "loftq"] = Field(
        "default", description="PEFT init_lora_weights: default (B = 0), gaussian, pissa, olora, or loftq (a full-precision "
                               "base quantised by LoftQ itself)")
    modules_to_save: list[str] | None = Field(
        None, description="modules trained in full and saved beside the adapter (e.g. [lm_head]; PEFT modules_to_save)")

    @model_validator(mode="after")
    def _peft_accepts(self):
        """PEFT's own checks, at load, for the variants (the default needs no import of peft)."""
        if self.use_dora or self.use_rslora or self.init_lora_weights != "default" or self.modules_to_save:
            try:
                peft_lora_config(self)
            except (ValueError, ImportError) as e:
                raise ValueError(f"PEFT refuses this LoRA configuration: {e}") from None
        return self


def peft_lora_config(lora: LoraSpec):
    """The PEFT LoraConfig of a `train.lora` section."""
    from peft import LoftQConfig, LoraConfig  # imported when called: peft is slow to import

    init = True if lora.init_lora_weights == "default" else lora.init_lora_weights
    return LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout, target_modules=lora.target_modules,
                      task_type="CAUSAL_LM", use_dora=lora.use_dora, use_rslora=lora.use_rslora,
                      init_lora_weights=init, modules_to_save=lora.modules_to_save,
                      loftq_config=LoftQConfig(loftq_bits=4) if init == "loftq" else {})


class WatchdogSpec(Strict):
    """When the training loss says the run diverged: it is stopped, and the cell marked diverged."""

    enabled: bool = Field(True, description="stop a training whose loss turns NaN/Inf or spikes, and mark its cell diverged")
    spike_factor: float = Field(4.0, gt=1.0, description="a logged loss above this multiple of the early level is a spike")
    patience: int = Field(3, ge=1, description="consecutive spiking logging steps that stop the run (NaN/Inf stops at once)")
    early_steps: int = Field(5, ge=1, description="the early level: the median of the first N logged losses")


class TrainSpec(Strict):
    seed: int = 42
    epochs: float = Field(2.0, gt=0)
    learning_rate: float = Field(2e-4, gt=0)
    batch_size: int = Field(8, ge=1, description="per-device train batch size")
    gradient_accumulation_steps: int = Field(1, ge=1)
    max_length: int = Field(512, ge=16, description="tokens per example; longer ones are truncated")
    lr_scheduler: str = Field("cosine", description="a transformers scheduler (SchedulerType): cosine, linear, ...")
    warmup_ratio: float = Field(0.0, ge=0.0, lt=1.0)
    weight_decay: float = Field(0.0, ge=0.0)
    lora: LoraSpec = LoraSpec()
    quantization: Literal["none", "4bit"] = Field(
        "none", description="4bit = QLoRA: the base in nf4 (bitsandbytes, on CUDA or the CPU); evaluated in-process on "
                            "that 4-bit base, served by vLLM merged or on the bf16 base (docs/qlora.md)")
    precision: Literal["auto", "fp32", "bf16"] = Field(
        "auto", description="auto = bf16 where the hardware does it natively, else fp32"
    )
    gradient_checkpointing: bool = Field(False, description="trade compute for memory; only where memory needs it")
    attn_implementation: Literal["auto", "sdpa", "eager", "flash_attention_2", "flash_attention_3"] = Field(
        "auto", description="auto = flash_attention_2 on CUDA when flash-attn is installed, else sdpa")
    padding_free: bool = Field(False, description="flatten each batch into one row without padding (TRL); without packing, max_length is not enforced")
    packing: bool = Field(False, description="pack examples into max_length rows, best-fit decreasing (TRL 'bfd')")
    use_liger_kernel: bool = Field(False, description="Liger's fused Triton kernels (CUDA; pip install liger-kernel)")
    optim: Literal["adamw_torch_fused", "adamw_torch", "paged_adamw_8bit"] = Field(
        "adamw_torch_fused", description="transformers' default; paged_adamw_8bit: bitsandbytes' paged 8-bit AdamW "
                                         "(CUDA only: it pages through CUDA memory)")
    chat_template: str | None = Field(
        None, description="the chat template examples are formatted with: null = the tokenizer's own; for a base model "
                          "without one, a name in configs/chat_templates.yaml (chatml) or a path to a .jinja file")
    logging_steps: int = Field(1, ge=1)
    save_steps: int | None = Field(None, ge=1, description="checkpoint every N steps; a rerun resumes from the last")
    # How a training is watched, not what it makes: left out of every dump (the cell's config, the
    # sweep's cell key, the training's inputs), so switching them never redoes or orphans a step.
    report_to: list[Literal["tensorboard", "trackio", "wandb", "mlflow", "none"]] = Field(
        default_factory=lambda: ["none"], exclude=True,
        description="experiment trackers the training, its config and its evaluations are logged to: tensorboard "
                    "(<cell>/tensorboard/), trackio (<experiment>/trackio/), wandb, mlflow (their own environment "
                    "variables), or none")
    watchdog: WatchdogSpec = Field(default_factory=WatchdogSpec, exclude=True,
                                   description="stop a diverging training (NaN/Inf or spiking loss)")
    stop_check: int = Field(8, ge=0, exclude=True,
                            description="after training, greedy answers to this many eval prompts must end their turn "
                                        "within eval.max_new_tokens (a warning if not); 0 = no check")

    @field_validator("report_to", mode="before")
    @classmethod
    def _one_tracker_is_a_list(cls, v):
        return [v] if isinstance(v, str) else v

    @field_validator("report_to")
    @classmethod
    def _trackers(cls, v: list[str]) -> list[str]:
        if not v:
            raise ValueError("name a tracker, or none")
        if "none" in v and len(v) > 1:
            raise ValueError("none goes alone")
        if len(set(v)) != len(v):
            raise ValueError("a tracker is listed twice")
        return v

    @field_validator("chat_template")
    @classmethod
    def _named_or_a_jinja_file(cls, v: str | None) -> str | None:
        if v is not None:
            template_text(v)  # ValueError: unknown name, or no such file
        return v

    @model_serializer(mode="wrap")
    def _no_template_left_out(self, handler):
        # added after training records existed: left out of every dump while unset, so that the cells
        # and trainings made before it (with the tokenizer's own template) keep their keys and inputs
        out = handler(self)
        if out.get("chat_template", "set") is None:
            del out["chat_template"]
        return out

    @property
    def trackers(self) -> list[str]:
        """The trackers asked for; none is the empty list."""
        return [t for t in self.report_to if t != "none"]

    @field_validator("lr_scheduler")
    @classmethod
    def _scheduler(cls, v: str) -> str:
        if v not in LR_SCHEDULERS:
            raise ValueError(f"unknown scheduler {v!r}; {_nearest(v, list(LR_SCHEDULERS))}")
        return v

    @model_validator(mode="after")
    def _lora_init_fits_the_quantisation(self):
        # PiSSA and LoftQ start from the full-precision weights (PEFT refuses PiSSA on 4-bit ones; LoftQ
        # quantises the base itself), so neither goes with a base already loaded in 4 bits
        if self.quantization == "4bit" and self.lora.init_lora_weights in ("pissa", "loftq"):
            raise ValueError(f"lora.init_lora_weights: {self.lora.init_lora_weights} needs the full-precision base, "
                             "not quantization: 4bit (use init_lora_weights: default, gaussian or olora with QLoRA)")
        return self


class QLoRAStudySpec(Strict):
    """What an experiment of QLoRA adapters measures beside them (ftscale/qlora_study.py, docs/qlora.md)."""

    lora_beside: bool = Field(True, description="train each size as a plain LoRA on the bf16 base too (<cell>-lora/), "
                                                "evaluated in-process: scores paired per item, peak memory, tokens/s")
    merges: list[Literal["original", "dequantized"]] = Field(
        default_factory=lambda: ["original", "dequantized"],
        description="merge each adapter into the original bf16 weights and/or the dequantized nf4 ones, and evaluate "
                    "each merge in-process")
    serve_merged: bool = Field(False, description="also serve the default merge through vLLM and evaluate it there "
                                                  "(a server per size: a minute or two to start on a CPU)")


class DataSpec(Strict):
    train: Path | None = Field(None, description="training pool, OpenAI chat fine-tuning JSONL (default: the task's)")
    eval: Path | None = Field(None, description="held-out eval set: messages without the answer, id, reference (default: the task's)")
    seed: int = Field(0, description="seed of the shuffle that nested subsets are cut from")
    format: Format = Field(CANONICAL, description="data.train's format: openai_chat, alpaca, sharegpt or prompt_completion "
                                                  "(converted once to chat JSONL in output_dir/task-data/); data.eval is "
                                                  "always chat JSONL")
    # (the file, its format) data.train was converted from: load_config points data.train at the converted
    # file, which write_task_data writes
    _converted_from: tuple[Path, str] | None = PrivateAttr(None)

    @field_validator("train", "eval")
    @classmethod
    def _user_file_else_shipped(cls, v):
        """A relative path that is not in the working folder may name a shipped dataset (data/...)."""
        return None if v is None else paths.shipped(v)

    @model_serializer(mode="wrap")
    def _canonical_left_out(self, handler):
        # added after cells existed: left out of every dump while canonical (always, once loaded), so the cells
        # and trainings made before it keep their keys
        out = handler(self)
        if out.get("format") == CANONICAL:
            del out["format"]
        return out


class ProbeSpec(Strict):
    task: str = Field("probes", description="a task whose eval set is the probes (configs/tasks/ name or YAML path)")
    limit: int | None = Field(None, ge=1, description="ask only the first N probes")


class EvalSpec(Strict):
    prompt_variants: list[str] = Field(default_factory=lambda: ["default"], min_length=1)
    baseline_variants: list[str] = Field(
        default_factory=list, description="variants evaluated on the untrained base only (prompt-engineering baselines)"
    )
    few_shot_k: int = Field(3, ge=1, description="examples in the few_shot prompt variant")
    batch_size: int = Field(16, ge=1)
    max_new_tokens: int = Field(96, ge=1)
    temperature: float = Field(0.0, ge=0.0, description="0 = greedy decoding")
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    seed: int = 0
    precision: Literal["auto", "fp32", "bf16"] = Field("auto", description="as train.precision")
    limit: int | None = Field(None, ge=1, description="evaluate only the first N eval examples")
    temperatures: list[float] = Field(
        default_factory=list, description="evaluate every cell at each of these temperatures (a row per temperature); "
                                          "empty: at `temperature` alone")
    probes: ProbeSpec | None = Field(None, description="general-ability questions asked of every cell: forgetting")
    judge: ModelSpec | None = Field(None, description="replaces the model of every judge of the task (its judge evaluators "
                                                "and pairwise judgements): hf:<model>, openai:<model>[@<base_url>]")
    pairwise_limit: int | None = Field(None, ge=1, description="queries per pairwise comparison (default: the task's "
                                                               "pairwise.limit)")

    @field_validator("temperatures")
    @classmethod
    def _temperatures(cls, v: list[float]) -> list[float]:
        if any(t < 0 for t in v):
            raise ValueError("temperatures must be >= 0")
        if len(set(v)) != len(v):
            raise ValueError("a temperature is listed twice")
        return v

    @model_validator(mode="after")
    def _one_temperature_knob(self):
        if self.temperatures and "temperature" in self.model_fields_set and self.temperature not in self.temperatures:
            raise ValueError(f"temperature {self.temperature:g} is not among temperatures {self.temperatures}: "
                             "set one of the two")
        return self

    @property
    def all_temperatures(self) -> list[float]:
        return self.temperatures or [self.temperature]


class ServeSpec(Strict):
    max_model_len: int = Field(2048, ge=64, description="context length the vLLM server allows")
    kv_cache_gb: float = Field(1.0, gt=0, description="KV cache size on a CPU (on CUDA vLLM sizes it itself)")
    max_num_seqs: int | None = Field(None, ge=1, description="vLLM's limit on sequences decoded together")
    concurrency: int = Field(16, ge=1, description="requests in flight from the openai backend")
    startup_timeout_s: float = Field(600, gt=0, description="give up if /health is not OK by then")


class OpenAISpec(Strict):
    """An OpenAI (or OpenAI-compatible provider's) fine-tuning job on the same nested subset."""

    model: str = Field("gpt-4.1-mini-2025-04-14", description="the model to fine-tune")
    base_url: str | None = Field(None, description="another OpenAI-compatible provider; default: OpenAI")
    api_key_env: str | None = Field(None, pattern=r"^[A-Za-z_][A-Za-z0-9_]*$",
                                    description="the environment variable holding the key for base_url (only "
                                                "OpenAI's own API gets OPENAI_API_KEY); the name, never the key")
    epochs: int | Literal["auto"] = "auto"
    batch_size: int | Literal["auto"] = "auto"
    learning_rate_multiplier: float | Literal["auto"] = "auto"
    suffix: str | None = Field(None, max_length=64, description="part of the ft: model name")
    poll_interval_s: float = Field(30.0, gt=0)


class CostSpec(Strict):
    """How the report prices each system; it changes the report only, never a run's results."""

    prices: Path = Field(Path("configs/prices.yaml"), description="the dated price table; copy it to change prices")
    hardware: str = Field("auto", description="a local_hardware entry of the price table; auto = the GPU's name, else cpu")
    hourly_usd: float | None = Field(None, gt=0, description="your price per hour of the local machine; overrides the table")
    reference_model: str = Field("gpt-4.1-2025-04-14", description="the bigger model that is prompted instead of fine-tuning")
    reference_variant: str = Field("few_shot", description="the prompt variant the reference model is given")
    cached_input_fraction: float = Field(0.0, ge=0.0, le=1.0, description="share of input tokens billed at the cached price")


class ExperimentConfig(Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
    task: str
    model: str = Field(description="hub id, local directory or a name in configs/models/")
    data: DataSpec = DataSpec()
    num_train_examples: int | list[int] = Field(
        description="training examples (nested subsets); 0 = evaluate the untrained base model"
    )
    train: TrainSpec = TrainSpec()
    eval: EvalSpec = EvalSpec()
    serve: ServeSpec = ServeSpec()
    openai: OpenAISpec = OpenAISpec()
    cost: CostSpec = CostSpec()
    output_dir: Path = Field(Path("runs"), description="experiments write to output_dir/name/")
    # what is measured beside the cells, never what a cell is made from: left out of every dump
    qlora: QLoRAStudySpec | None = Field(None, exclude=True, description="with train.quantization: 4bit, the QLoRA "
                                         "study: LoRA beside, the adapter on the bf16 base, merges, vLLM")
    # (the `task` it was resolved from, the task): load_config resolves it once, for whoever uses it
    _task: tuple[str, Task] | None = PrivateAttr(None)

    @field_validator("num_train_examples")
    @classmethod
    def _non_negative(cls, v):
        sizes = v if isinstance(v, list) else [v]
        if not sizes or any(n < 0 for n in sizes):
            raise ValueError("must be a non-negative integer or a non-empty list of them")
        return v

    @model_validator(mode="after")
    def _study_of_qlora(self):
        if self.qlora is not None and self.train.quantization != "4bit":
            raise ValueError("qlora: the QLoRA study needs train.quantization: 4bit")
        return self

    @model_validator(mode="after")
    def _files_exist(self):
        for key in ("train", "eval"):
            path = getattr(self.data, key)
            if path is not None and not Path(path).is_file():
                raise ValueError(f"data.{key}: file not found: {path}")
        return self

    @property
    def sizes(self) -> list[int]:
        n = self.num_train_examples
        return sorted(set(n)) if isinstance(n, list) else [n]

    def single_size(self) -> int:
        """The one training size of a single-cell command (sft.py, openai_ft.py)."""
        if len(self.sizes) != 1:
            raise ConfigError(f"num_train_examples lists {self.sizes}; this trains one size: pass "
                              f"--num_train_examples N (or use `ftscale run` for all of them)")
        return self.sizes[0]

    @property
    def experiment_dir(self) -> Path:
        return self.output_dir / self.name

    @property
    def task_data_dir(self) -> Path:
        """Where the datasets that tasks name are written as chat JSONL (<task>/<train|eval>.jsonl)."""
        return self.output_dir / "task-data"

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)

    def cell_yaml(self, n: int) -> str:
        """The config of one cell: what decides its results (the cost section only prices the report)."""
        return yaml.safe_dump(self.model_copy(update={"num_train_examples": n}).model_dump(mode="json", exclude={"cost"}),
                              sort_keys=False)


def load_config(path: str | Path, overrides: dict[str, str] | None = None,
                overlays: list[str | Path] | tuple = ()) -> ExperimentConfig:
    """Load, overlay, override and validate an experiment config; raise ConfigError naming file, line, key.
    Overlays (a tune's best.yaml) are merged over the file in turn, the dotted overrides last.
    Its task is resolved once and kept with it (config_task). Data files it does not name are its
    task's: a file is checked where it is, a dataset's file only named (write_task_data writes it), as is
    the chat JSONL a data.train in another format (data.format) is converted to."""
    path = paths.find_config(path, "experiments")
    cfg = load_validated(path, ExperimentConfig, overrides, overlays)
    if cfg.data.format != CANONICAL:
        _read_converted(cfg, path)
    try:
        task = config_task(cfg)
    except KeyError:
        task = None  # refused, with the known tasks, where the task is used (experiment.task_for)
    if cfg.data.train is None or cfg.data.eval is None:
        if task is None:
            raise ConfigError(f"{path}: data.train, data.eval: required: task {cfg.task!r} names no data of its own")
        if cfg.data.train is None and task.data.train is None:
            raise ConfigError(f"{path}: data.train: task {cfg.task!r} has no training pool (a probe set is asked, "
                              "not trained on: name it under eval.probes)")
        cfg.data.train = cfg.data.train or task.data.file("train", cfg.task_data_dir)
        cfg.data.eval = cfg.data.eval or task.data.file("eval", cfg.task_data_dir)
    if task is not None and "eval" not in _from_datasets(cfg, task):  # a dataset is checked once written
        _check_eval_references(cfg, task)
    return cfg


def config_task(cfg: ExperimentConfig) -> Task:
    """The config's task: the one load_config resolved, else resolved now (KeyError: no such task)."""
    if cfg._task is None or cfg._task[0] != cfg.task:
        cfg._task = (cfg.task, get_task(cfg.task))
    return cfg._task[1]


def _read_converted(cfg: ExperimentConfig, path: Path) -> None:
    """A data.train in another format: the config reads its conversion to chat JSONL (in task_data_dir,
    written by write_task_data) and says so (format openai_chat), so that its dump loads as it is."""
    if cfg.data.train is None:
        raise ConfigError(f"{path}: data.format: {cfg.data.format} is the format of the data.train the config names, "
                          "and it names none (a task's training pool has its own data.format, in the task file)")
    cfg.data._converted_from = (cfg.data.train, cfg.data.format)
    cfg.data.train = converted_path(cfg.data.train, cfg.data.format, cfg.task_data_dir)
    cfg.data.format = CANONICAL


def _from_datasets(cfg: ExperimentConfig, task: Task) -> list[str]:
    """The kinds of data (train, eval) the config takes from its task's written files (datasets, conversions)."""
    return [kind for kind in ("train", "eval")
            if task.data.is_written(kind) and getattr(cfg.data, kind) == task.data.file(kind, cfg.task_data_dir)]


def write_task_data(cfg: ExperimentConfig) -> None:
    """Write out the training file the config names in another format, converted, and the datasets (or
    conversions) the config takes from its task (to task_data_dir, once), then refuse an eval set lacking
    what the evaluators read: what loading the config leaves to whoever first needs the files."""
    if cfg.data._converted_from is not None:
        convert_file(*cfg.data._converted_from, cfg.data.train)
    if cfg._task is None:  # no task resolved: its data are the files it names
        return
    task = cfg._task[1]
    kinds = _from_datasets(cfg, task)
    for kind in kinds:
        task.data.write(kind, cfg.task_data_dir)
    if "eval" in kinds:
        _check_eval_references(cfg, task)


def _check_eval_references(cfg: ExperimentConfig, task: Task) -> None:
    """Every eval example holds what the task's evaluators read: refused here, not after generation."""
    refuse_missing_references(task, cfg.data.eval, read_jsonl(cfg.data.eval, "eval"))


def parse_overrides(args: list[str]) -> dict[str, str]:
    """`['--train.seed', '3', '--num_train_examples=50']` -> {'train.seed': '3', ...}."""
    out: dict[str, str] = {}
    i = 0
    while i < len(args):
        arg = args[i]
        if not arg.startswith("--") or arg == "--":
            raise ConfigError(f"unexpected argument {arg!r}: overrides look like --section.key value")
        key, eq, value = arg[2:].partition("=")
        if not eq:
            if i + 1 >= len(args):
                raise ConfigError(f"--{key}: missing value")
            value = args[i + 1]
            i += 1
        out[key] = value
        i += 1
    return out

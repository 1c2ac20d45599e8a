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
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from ftscale.eval.backends import ModelSpec

from .errors import ConfigError
from .yamlfile import line_of, load_yaml, parse_value


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=False)


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
    from peft import LoftQConfig, LoraConfig

    init = True if lora.init_lora_weights == "default" else lora.init_lora_weights
    return LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout, target_modules=lora.target_modules,
                      task_type="CAUSAL_LM", use_dora=lora.use_dora, use_rslora=lora.use_rslora,
                      init_lora_weights=init, modules_to_save=lora.modules_to_save,
                      loftq_config=LoftQConfig(loftq_bits=4) if init == "loftq" else {})


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
    quantization: Literal["none", "4bit"] = Field("none", description="4bit = QLoRA (CUDA only)")
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
        "adamw_torch_fused", description="transformers' default; paged_adamw_8bit: bitsandbytes' paged 8-bit AdamW (CUDA)")
    logging_steps: int = Field(1, ge=1)
    save_steps: int | None = Field(None, ge=1, description="checkpoint every N steps; a rerun resumes from the last")

    @field_validator("lr_scheduler")
    @classmethod
    def _scheduler(cls, v: str) -> str:
        from transformers.trainer_utils import SchedulerType

        valid = [s.value for s in SchedulerType]
        if v not in valid:
            raise ValueError(f"unknown scheduler {v!r}; {_nearest(v, valid)}")
        return v

    @model_validator(mode="after")
    def _lora_init_fits_the_quantisation(self):
        # PiSSA and LoftQ start from the full-precision weights (PEFT refuses PiSSA on 4-bit ones; LoftQ
        # quantises the base itself), so neither goes with a base already loaded in 4 bits
        if self.quantization == "4bit" and self.lora.init_lora_weights in ("pissa", "loftq"):
            raise ValueError(f"lora.init_lora_weights: {self.lora.init_lora_weights} needs the full-precision base, "
                             "not quantization: 4bit (use init_lora_weights: default, gaussian or olora with QLoRA)")
        return self


class DataSpec(Strict):
    train: Path | None = Field(None, description="training pool, OpenAI chat fine-tuning JSONL (default: the task's)")
    eval: Path | None = Field(None, description="held-out eval set: messages without the answer, id, reference (default: the task's)")
    seed: int = Field(0, description="seed of the shuffle that nested subsets are cut from")


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

    @field_validator("num_train_examples")
    @classmethod
    def _non_negative(cls, v):
        sizes = v if isinstance(v, list) else [v]
        if not sizes or any(n < 0 for n in sizes):
            raise ValueError("must be a non-negative integer or a non-empty list of them")
        return v

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

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)

    def cell_yaml(self, n: int) -> str:
        """The config of one cell: what decides its results (the cost section only prices the report)."""
        return yaml.safe_dump(self.model_copy(update={"num_train_examples": n}).model_dump(mode="json", exclude={"cost"}),
                              sort_keys=False)


def apply_overrides(data: dict, overrides: dict[str, str]) -> dict:
    """Set dotted keys (`train.lora.r`) in a nested mapping; values are parsed as YAML."""
    for dotted, raw in overrides.items():
        node = data
        *parents, last = dotted.split(".")
        for key in parents:
            node = node.setdefault(key, {})
            if not isinstance(node, dict):
                raise ConfigError(f"--{dotted}: '{key}' is not a section of the config")
        if not last:
            raise ConfigError(f"--{dotted}: an override names a key, e.g. --train.seed 3")
        node[last] = parse_value(raw) if isinstance(raw, str) else raw
    return data


def _field_names(model) -> set[str]:
    names = set()
    for name, field in model.model_fields.items():
        names.add(name)
        if isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel):
            names |= _field_names(field.annotation)
    return names


def _key_path(err: dict, names: set[str], lines: dict) -> tuple:
    """The config keys of an error's location, without the union members pydantic adds ('list[int]')."""
    if err["type"] == "extra_forbidden":
        return tuple(err["loc"])  # the last part is the user's unknown key
    out = []
    for part in err["loc"]:
        # a field name or a key of the file (a mapping's own keys, e.g. model names in a price table)
        if isinstance(part, str) and part not in names and (*out, part) not in lines:
            break
        out.append(part)
    return tuple(out)


def _format_errors(path: Path, lines: dict, err: ValidationError, overridden: set[str], model) -> str:
    out, names = [], _field_names(model)
    for e in err.errors():
        loc = _key_path(e, names, lines)
        key = ".".join(str(x) for x in loc) or "(top level)"
        msg = e["msg"]
        if e["type"] == "extra_forbidden":
            msg = "unknown key"
        elif e["type"] == "missing":
            msg = "required key is missing"
        elif msg.startswith("Value error, "):
            msg = msg[len("Value error, "):]
        source = f"--{key} (command line)" if key in overridden else None
        if source is None:
            line = line_of(lines, loc)
            source = f"{path}:{line}" if line else str(path)
        shown = e["type"] not in ("missing", "extra_forbidden") and not isinstance(e.get("input"), (dict, type(None)))
        detail = f" (got {e['input']!r})" if shown else ""
        out.append(f"{source}: {key}: {msg}{detail}")
    return "\n".join(out)


def load_validated(path: str | Path, model: type[BaseModel], overrides: dict[str, str] | None = None):
    """Load a YAML file (plus dotted overrides) into `model`; raise ConfigError naming file, line, key."""
    path = Path(path)
    data, lines = load_yaml(path)
    overrides = overrides or {}
    apply_overrides(data, overrides)
    try:
        return model.model_validate(data)
    except ValidationError as e:
        raise ConfigError(_format_errors(path, lines, e, set(overrides), model)) from None


def load_config(path: str | Path, overrides: dict[str, str] | None = None) -> ExperimentConfig:
    """Load, override and validate an experiment config; raise ConfigError naming file, line, key.
    Data files it does not name come from its task's YAML (a dataset is written out as JSONL)."""
    cfg = load_validated(path, ExperimentConfig, overrides)
    if cfg.data.train is None or cfg.data.eval is None:
        from ftscale.eval.tasks.yaml_task import data_files, find_task_file, load_spec

        task_file = find_task_file(cfg.task)
        if task_file is None:
            raise ConfigError(f"{path}: data.train, data.eval: required: task {cfg.task!r} names no data of its own")
        train, eval_ = data_files(load_spec(task_file), task_file, cfg.output_dir / "task-data")
        if cfg.data.train is None and train is None:
            raise ConfigError(f"{path}: data.train: task {cfg.task!r} has no training pool (a probe set is asked, "
                              "not trained on: name it under eval.probes)")
        cfg.data.train = cfg.data.train or train
        cfg.data.eval = cfg.data.eval or eval_
    _check_eval_references(cfg)
    return cfg


def _check_eval_references(cfg: ExperimentConfig) -> None:
    """Every eval example holds what the task's evaluators read: refused here, not after generation."""
    from ftscale.chatdata import read_jsonl
    from ftscale.eval.tasks import get_task
    from ftscale.eval.tasks.check import refuse_missing_references

    try:
        task = get_task(cfg.task)
    except KeyError:
        return  # an unknown task is refused, with the known ones, where the task is looked up
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

"""What an experiment config asks for: its task (every prompt variant checked), its general-ability
probes, and the inputs digest of every step it owes (what the report compares completion records with,
so that a cell left from an earlier config is never shown as this one's).
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import yaml
from pydantic import ValidationError

from . import completion
from .cellrunner import eval_jobs, hf_answerer
from .chatdata import read_jsonl
from .config import ExperimentConfig, config_task, write_task_data
from .errors import ConfigError, FtscaleError
from .eval.tasks import get_task, with_judge
from .rundir import cell_dir
from .stepinputs import train_inputs


def task_for(cfg: ExperimentConfig, variants: list[str] | None = None):
    """The config's task (resolved once, by load_config), with every prompt variant that will be asked for
    checked up front; the datasets the config takes from it are written out here, for the run that follows."""
    try:
        task = config_task(cfg)
    except KeyError as e:
        raise ConfigError(f"task: {e.args[0]}") from None
    write_task_data(cfg)
    return _as_configured(task, cfg, variants or cfg.eval.prompt_variants + cfg.eval.baseline_variants)


def _as_configured(task, cfg: ExperimentConfig, variants: list[str]):
    """The task with the config's judge and pairwise limit; a prompt variant it lacks is refused."""
    if cfg.eval.judge is not None:
        task = with_judge(task, cfg.eval.judge)
    if cfg.eval.pairwise_limit is not None and task.pairwise is not None:
        task = replace(task, pairwise=task.pairwise.model_copy(update={"limit": cfg.eval.pairwise_limit}))
    unknown = [v for v in variants if v not in task.prompt_variants]
    if unknown:
        raise ConfigError(f"prompt variants {unknown} are unknown to task {task.name!r} "
                          f"(it has {', '.join(task.prompt_variants)})")
    return task


def load_probes(cfg: ExperimentConfig) -> tuple | None:
    """(probe task, probe examples) of `eval.probes`, or None."""
    spec = cfg.eval.probes
    if spec is None:
        return None
    try:
        task = get_task(spec.task)
    except KeyError:
        raise ConfigError(f"eval.probes.task: no task YAML {spec.task!r} (a name in configs/tasks/ or a path)") from None
    eval_path = task.data.write("eval", cfg.task_data_dir)
    return _as_configured(task, cfg, ["default"]), read_jsonl(eval_path, "eval")[: spec.limit]


def expected_inputs(cfg: ExperimentConfig, task, pool: list[dict], examples: list[dict], probes) -> dict[Path, str]:
    """The inputs digest of every step `ftscale run` of this config owes (folder -> digest): what the
    report compares records with, so a cell left from an earlier config is never shown as this one's."""
    out = {}
    for n in cfg.sizes:
        cell = cell_dir(cfg.experiment_dir, n, cfg.train.seed)
        out[cell] = completion.digest(train_inputs(cfg, n, pool))
        variants = cfg.eval.prompt_variants + (cfg.eval.baseline_variants if n == 0 else [])
        answerer = hf_answerer(cfg, cell / "adapter" if n > 0 else None)
        out |= {job.out_dir: completion.digest(job.inputs)
                for job in eval_jobs(cfg, cell, task, pool, examples, variants, answerer, probes)}
    return out


def expected_for_dir(exp_dir: Path) -> dict[Path, str]:
    """`expected_inputs` of the config an experiment directory was last run with (its experiment.yaml);
    empty when there is none, or it no longer loads (then the records alone decide)."""
    path = Path(exp_dir) / "experiment.yaml"
    if not path.is_file():
        return {}
    try:
        cfg = ExperimentConfig.model_validate(yaml.safe_load(path.read_text()))
        cfg = cfg.model_copy(update={"output_dir": Path(exp_dir).parent})
        task = task_for(cfg)
    except (ValidationError, yaml.YAMLError, FtscaleError):
        return {}
    pool = read_jsonl(cfg.data.train, "train")
    return expected_inputs(cfg, task, pool, read_jsonl(cfg.data.eval, "eval")[: cfg.eval.limit], load_probes(cfg))

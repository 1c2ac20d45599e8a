"""Run an experiment: for each training size, train (or reuse) an adapter, evaluate it, report.

Every step is skipped when its completion record names exactly the inputs it would be made from
now (ftscale/cellrunner.py), so a killed run started again picks up where it stopped, and a
changed config redoes exactly the steps it changes.
"""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path

import yaml
from pydantic import ValidationError
from tqdm.auto import tqdm

from .atomic import write_text
from .cellrunner import ensure_trained, eval_jobs, hf_answerer, run_evals
from .chatdata import read_jsonl
from .config import ExperimentConfig
from .errors import ConfigError, FtscaleError, StepsFailed
from .models import check_for_training
from .rundir import cell_dir


def task_for(cfg: ExperimentConfig, variants: list[str] | None = None):
    """The config's task, with every prompt variant that will be asked for checked up front."""
    from ftscale.eval.tasks import get_task

    try:
        task = get_task(cfg.task)
    except KeyError as e:
        raise ConfigError(f"task: {e.args[0]}") from None
    if cfg.eval.judge is not None:
        from ftscale.eval.tasks import with_judge

        task = with_judge(task, cfg.eval.judge)
    if cfg.eval.pairwise_limit is not None and task.pairwise is not None:
        task = replace(task, pairwise=task.pairwise.model_copy(update={"limit": cfg.eval.pairwise_limit}))
    wanted = variants or cfg.eval.prompt_variants + cfg.eval.baseline_variants
    unknown = [v for v in wanted if v not in task.prompt_variants]
    if unknown:
        raise ConfigError(f"prompt variants {unknown} are unknown to task {task.name!r} "
                          f"(it has {', '.join(task.prompt_variants)})")
    return task


def load_probes(cfg: ExperimentConfig) -> tuple | None:
    """(probe task, probe examples) of `eval.probes`, or None."""
    from ftscale.eval.tasks.yaml_task import data_files, find_task_file, load_spec

    spec = cfg.eval.probes
    if spec is None:
        return None
    path = find_task_file(spec.task)
    if path is None:
        raise ConfigError(f"eval.probes.task: no task YAML {spec.task!r} (a name in configs/tasks/ or a path)")
    _, eval_path = data_files(load_spec(path), path, cfg.output_dir / "task-data")
    return task_for(cfg.model_copy(update={"task": str(path)}), ["default"]), read_jsonl(eval_path, "eval")[: spec.limit]


def run_experiment(cfg: ExperimentConfig, log=print) -> Path:
    """Every size: train (or reuse) and evaluate through the cell runner, then the summary. Failed
    evaluations are listed in the summary and raise StepsFailed (exit 1) once all the rest is done."""
    from ftscale.eval.report import audit, write_report

    from ftscale.eval.tasks.check import refuse_overlap

    task = task_for(cfg)
    refuse_overlap(cfg.data.train, cfg.data.eval)  # before any training: scores on seen examples mean nothing
    check_for_training(cfg)  # the model, its chat template and LoRA targets: refused before the first cell
    pool = read_jsonl(cfg.data.train, "train")
    examples = read_jsonl(cfg.data.eval, "eval")[: cfg.eval.limit]
    probes = load_probes(cfg)
    exp_dir = cfg.experiment_dir
    write_text(exp_dir / "experiment.yaml", cfg.to_yaml())
    start = time.perf_counter()
    failures = []
    bar = tqdm(cfg.sizes, desc=f"{cfg.name}", unit="cell")
    for n in bar:
        bar.set_postfix_str(f"n={n}")
        cell = cell_dir(exp_dir, n, cfg.train.seed)
        ensure_trained(cfg, n, cell, log=log)
        variants = cfg.eval.prompt_variants + (cfg.eval.baseline_variants if n == 0 else [])
        answerer = hf_answerer(cfg, cell / "adapter" if n > 0 else None)
        jobs = eval_jobs(cfg, cell, task, pool, examples, variants, answerer, probes)
        failures += run_evals(cell, jobs, answerer, pool, cfg.eval.few_shot_k, log=log)
    rows, hidden = audit(exp_dir, expected_inputs(cfg, task, pool, examples, probes))
    if rows and task.pairwise is not None:
        from ftscale.eval.pairwise_runs import run_comparisons

        run_comparisons(exp_dir, task.pairwise, rows, log=log)
    if rows:
        report = write_report(exp_dir, task, cfg.cost, rows, hidden)
        log(f"done in {time.perf_counter() - start:.0f} s: {report}")
    if failures:
        raise StepsFailed(f"{len(failures)} evaluation(s) failed and were not recorded as done "
                          "(run the same command again to redo them):\n" + "\n".join(f.line() for f in failures))
    return exp_dir / "summary.md"


def expected_inputs(cfg: ExperimentConfig, task, pool: list[dict], examples: list[dict], probes) -> dict[Path, str]:
    """The inputs digest of every step `ftscale run` of this config owes (folder -> digest): what the
    report compares records with, so a cell left from an earlier config is never shown as this one's."""
    from . import completion
    from .stepinputs import train_inputs

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

"""Run an experiment: for each training size, train (or reuse) an adapter, evaluate it, report.

Every step is skipped when its result is already on disk for the same resolved config, so a
killed run started again picks up where it stopped.
"""

from __future__ import annotations

import shutil
import time
from dataclasses import replace
from pathlib import Path
from typing import Callable

import yaml
from pydantic import ValidationError
from tqdm.auto import tqdm

from .atomic import write_text
from .chatdata import read_jsonl
from .config import ExperimentConfig
from .errors import ConfigError
from .rundir import cell_dir, eval_dir, probe_dir, trained


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


def sampling_of(cfg: ExperimentConfig, task=None):
    """The experiment's sampling; a task's own defaults fill the keys the experiment does not set."""
    from ftscale.eval.backends import Sampling

    e = cfg.eval
    chosen = {k: getattr(e, k) for k in ("temperature", "top_p", "max_new_tokens")}
    for key, value in (getattr(task, "sampling", None) or {}).items():
        if key not in e.model_fields_set:
            chosen[key] = value
    return Sampling(**chosen, seed=e.seed)


def eval_label(backend: str, temperature: float) -> str:
    """An evaluation's label in its folder's name: the backend, and the temperature unless greedy."""
    return backend if temperature == 0.0 else f"{backend}-t{temperature:g}"


def at_temperature(cfg: ExperimentConfig, t: float) -> ExperimentConfig:
    return cfg.model_copy(update={"eval": cfg.eval.model_copy(update={"temperature": t})})


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


def evaluate_cell(cfg: ExperimentConfig, cell: Path, make_backend: Callable, task, pool, examples,
                  variants: list[str], backend: str = "hf", probes: tuple | None = None, log=print) -> dict:
    """Evaluate, at each of the config's temperatures, every variant (and the probes, asked as
    written) not yet scored in `cell`; the backend is built once, and only if there is work."""
    from ftscale.eval.evaluate import evaluate

    todo = []
    # without eval.temperatures, the one temperature sampling_of resolves (the task's default if the config sets none)
    for t in cfg.eval.temperatures or [sampling_of(cfg, task).temperature]:
        label = eval_label(backend, t)
        todo += [(t, label, variant, task, examples, eval_dir(cell, variant, label)) for variant in dict.fromkeys(variants)]
        if probes:
            todo.append((t, label, "probes", probes[0], probes[1], probe_dir(cell, label)))
    todo = [job for job in todo if not (job[-1] / "scores.json").is_file()]
    if not todo:
        return {}
    model = make_backend()
    out = {}
    for t, label, variant, which, items, out_dir in todo:
        cfg_t = at_temperature(cfg, t)
        sampling = sampling_of(cfg_t, which)
        if which is not task:  # the probes' answer length is theirs, not the task's
            sampling = replace(sampling, max_new_tokens=which.sampling.get("max_new_tokens", sampling.max_new_tokens))
        result = evaluate(which, items, pool, model, sampling, "default" if which is not task else variant, out_dir,
                          cfg.eval.few_shot_k)
        out[(label, variant)] = result
        log(f"{cell.name} [{label}, {variant}]: "
            + ", ".join(f"{k}={v:.3f}" if v is not None else f"{k}=n/a" for k, v in result["metrics"].items())
            + (f", {result['failed']} failed" if result["failed"] else ""))
    return out


def hf_backend_factory(cfg: ExperimentConfig, adapter: Path | None) -> Callable:
    from ftscale.eval.backends import make_backend

    return lambda: make_backend("hf", model=cfg.model, adapter=str(adapter) if adapter else None,
                                batch_size=cfg.eval.batch_size, dtype=cfg.eval.precision)


def config_changed(cell: Path, cfg: ExperimentConfig, n: int) -> bool:
    """Whether the cell on disk was made with another config. Compared after validation, so a key
    that a newer ftscale added with its default does not count as a change."""
    path = cell / "config.yaml"
    if not path.is_file():
        return False
    try:
        previous = ExperimentConfig.model_validate(yaml.safe_load(path.read_text()))
    except (ValidationError, yaml.YAMLError):
        return True
    return previous.cell_yaml(n) != cfg.cell_yaml(n)


def run_experiment(cfg: ExperimentConfig, log=print) -> Path:
    from ftscale.eval.report import collect, write_report
    from ftscale.train.sft import train

    from ftscale.eval.tasks.check import refuse_overlap

    task = task_for(cfg)
    refuse_overlap(cfg.data.train, cfg.data.eval)  # before any training: scores on seen examples mean nothing
    pool = read_jsonl(cfg.data.train, "train")
    examples = read_jsonl(cfg.data.eval, "eval")[: cfg.eval.limit]
    probes = load_probes(cfg)
    exp_dir = cfg.experiment_dir
    write_text(exp_dir / "experiment.yaml", cfg.to_yaml())
    start = time.perf_counter()
    bar = tqdm(cfg.sizes, desc=f"{cfg.name}", unit="cell")
    for n in bar:
        bar.set_postfix_str(f"n={n}")
        cell = cell_dir(exp_dir, n, cfg.train.seed)
        changed = config_changed(cell, cfg, n)
        if changed or not trained(cell):
            if changed:
                log(f"{cell.name}: config changed since the last run; training and evaluating again")
            for stale in [*cell.glob("eval-*"), *cell.glob("probes*")]:
                shutil.rmtree(stale)
            metrics = train(cfg, n, cell)
            if metrics.get("trained"):
                log(f"{cell.name}: trained {metrics['steps']} steps in {metrics['wall_time_s']:.1f} s "
                    f"({metrics['train_tokens_per_s']:.0f} tokens/s), loss {metrics['train_loss']:.3f}")
        else:
            log(f"{cell.name}: training already done, reusing {cell / 'adapter' if n else 'the base model'}")
        variants = cfg.eval.prompt_variants + (cfg.eval.baseline_variants if n == 0 else [])
        adapter = cell / "adapter" if n > 0 else None
        evaluate_cell(cfg, cell, hf_backend_factory(cfg, adapter), task, pool, examples, variants, probes=probes, log=log)
    rows = collect(exp_dir)
    if task.pairwise is not None:
        from ftscale.eval.pairwise_runs import run_comparisons

        run_comparisons(exp_dir, task.pairwise, rows, log=log)
    report = write_report(exp_dir, task, cfg.cost, rows)
    log(f"done in {time.perf_counter() - start:.0f} s: {report}")
    return report

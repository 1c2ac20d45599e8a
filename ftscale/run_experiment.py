"""Run an experiment: for each training size, train (or reuse) an adapter, evaluate it, report.

Every step is skipped when its completion record names exactly the inputs it would be made from
now (ftscale/cellrunner.py), so a killed run started again picks up where it stopped, and a
changed config redoes exactly the steps it changes.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from . import progress
from .atomic import write_text
from .cellrunner import Failure, ensure_trained, eval_jobs, hf_answerer, run_evals
from .chatdata import read_jsonl
from .children import exit_with_parent
from .claims import Claim
from .config import ExperimentConfig
from .errors import StepsFailed
from .eval.pairwise_runs import run_comparisons
from .eval.report import audit, write_report
from .eval.tasks.check import refuse_overlap
from .experiment import expected_inputs, load_probes, task_for
from .models import check_for_training
from .rundir import cell_dir
from .train.divergence import Diverged
from .train.tracking import check_installed


def longest_first(sizes: list[int]) -> list[int]:
    """The largest training first, then the base (its baseline prompts make it the next longest),
    then the rest from large to small: parallel cells then end close together."""
    order = sorted(sizes, reverse=True)
    if 0 in order and len(order) > 1:
        order.remove(0)
        order.insert(1, 0)
    return order


def _start_cell_process(n: int, started, events, log_dir: Path) -> None:
    """A cell process computes on its share of the cores (its own n of them: the scheduler then never
    moves it, or its cache, onto another's), as do the processes it starts. It imports the trainer
    and the in-process backend now (5-7 s), while the main process is still checking the model,
    rather than between two cells. Its progress goes to the run's view through `events`; what the
    libraries print goes to a log (each cell's own while it runs, see _run_cell_from)."""
    import torch

    exit_with_parent()  # a cell process outliving its run (killed) would write into the cells of the next
    with started.get_lock():  # the how-manyth process of the pool this one is
        index, started.value = started.value, started.value + 1
    progress.install(events.put)
    progress.output_to(log_dir / f"job-{index}.log")
    cores = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []  # Linux only
    if len(cores) >= (index + 1) * n:
        os.sched_setaffinity(0, cores[index * n:(index + 1) * n])
    os.environ["OMP_NUM_THREADS"] = str(n)
    torch.set_num_threads(n)
    from .eval.backends import hf  # noqa: F401
    from .train import sft  # noqa: F401


def _nothing() -> None:
    """Submitted once per process so that the pool starts them all at once (it starts one per task)."""


def _read_inputs(cfg: ExperimentConfig) -> tuple[list[dict], list[dict], tuple | None]:
    """What every cell is made from besides the task: the training pool, the eval examples, the probes."""
    return read_jsonl(cfg.data.train, "train"), read_jsonl(cfg.data.eval, "eval")[: cfg.eval.limit], load_probes(cfg)


def _run_cell_from(fields: dict, n: int) -> tuple[list[Failure], list[str]]:
    """run_cell in a process of its own, which reads its inputs itself."""
    cfg = ExperimentConfig.model_validate(fields)
    name = cell_dir(cfg.experiment_dir, n, cfg.train.seed).name
    with progress.cell(name, cfg.experiment_dir / LOGS / f"{name}.log"):
        progress.report("starting")
        failed, stopped = run_cell(cfg, n, task_for(cfg), *_read_inputs(cfg), log=progress.message)
        progress.report(_finished(failed, stopped))  # the last of this cell's events: the view waits for it
        return failed, stopped


def run_cell(cfg: ExperimentConfig, n: int, task, pool: list[dict], examples: list[dict], probes,
             log=print) -> tuple[list[Failure], list[str]]:
    """Train (or reuse) the cell of size n and evaluate it: its failed evaluations and, if its
    training diverged (then nothing is evaluated), the reason."""
    cell = cell_dir(cfg.experiment_dir, n, cfg.train.seed)
    try:
        ensure_trained(cfg, n, cell, log=log)
    except Diverged as e:  # not evaluated; the other cells go on
        log(str(e))
        return [], [str(e)]
    variants = cfg.eval.prompt_variants + (cfg.eval.baseline_variants if n == 0 else [])
    answerer = hf_answerer(cfg, cell / "adapter" if n > 0 else None)
    jobs = eval_jobs(cfg, cell, task, pool, examples, variants, answerer, probes)
    return run_evals(cell, jobs, answerer, pool, cfg.eval.few_shot_k, log=log), []


def run_experiment(cfg: ExperimentConfig, log=print, jobs: int = 1) -> Path:
    """Every size: train (or reuse) and evaluate through the cell runner, then the summary. Failed
    evaluations and diverged trainings are listed in the summary and raise StepsFailed (exit 1) once
    all the rest is done. jobs > 1 runs that many cells at once, each in a process of its own on
    its share of the cores (what is trained and answered is the same, bit for bit)."""
    check_installed(cfg.train.trackers)  # a tracker named but not installed: refused before any work
    task = task_for(cfg)
    refuse_overlap(cfg.data.train, cfg.data.eval)  # before any training: scores on seen examples mean nothing
    # one `ftscale run` per experiment folder: a second is refused, naming the first (ftscale/claims.py)
    with Claim(cfg.experiment_dir, "ftscale run"):
        return _run_in(cfg, task, log, jobs)


def _run_in(cfg: ExperimentConfig, task, log, jobs: int) -> Path:
    if jobs == 1:
        return _run_cells(cfg, task, log, None)
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    threads = max(1, cores // jobs)
    spawn = multiprocessing.get_context("spawn")
    events = spawn.Queue()  # the cells' progress, to the one view this process draws
    with ProcessPoolExecutor(jobs, mp_context=spawn, initializer=_start_cell_process,
                             initargs=(threads, spawn.Value("i", 0), events, cfg.experiment_dir / LOGS)) as cells:
        for _ in range(jobs):
            cells.submit(_nothing)
        return _run_cells(cfg, task, log, cells, events)


LOGS = "logs"  # <experiment>/logs/<cell>.log: what the libraries printed while the cell ran


def _finished(failed: list, stopped: list) -> str:
    """How a cell's line in the view ends."""
    return ("diverged" if stopped else f"failed: {len(failed)} evaluation(s)" if failed else "done")


def _cells_in_view(cfg: ExperimentConfig, task, inputs: tuple, cells, events) -> tuple[list[Failure], list[str]]:
    """Every cell, one after the other in this process or in the pool `cells` (longest first), shown in one
    progress view (ftscale/progress.py); their failed evaluations and diverged trainings."""
    exp_dir = cfg.experiment_dir
    order = cfg.sizes if cells is None else longest_first(cfg.sizes)
    names = {n: cell_dir(exp_dir, n, cfg.train.seed).name for n in order}
    board = progress.view(cfg.name, list(names.values()))
    failures, diverged = [], []
    drain = None
    try:
        if cells is None:
            progress.install(board)
            for n in order:
                with progress.cell(names[n], exp_dir / LOGS / f"{names[n]}.log"):
                    failed, stopped = run_cell(cfg, n, task, *inputs, log=progress.message)
                board(progress.Event(names[n], _finished(failed, stopped)))
                failures, diverged = failures + failed, diverged + stopped
            return failures, diverged
        import threading
        from concurrent.futures import as_completed

        drain = threading.Thread(target=_drain, args=(events, board), daemon=True)
        drain.start()
        # the config travels as its fields (its task holds functions, which do not pickle)
        running = {cells.submit(_run_cell_from, cfg.model_dump(), n): n for n in order}
        for done in as_completed(running):
            failed, stopped = done.result()
            failures, diverged = failures + failed, diverged + stopped
        board.wait_finished(timeout_s=30)
        return failures, diverged
    finally:
        progress.install(None)
        if drain is not None:
            events.put(None)
            drain.join(timeout=10)
        board.close()


def _drain(events, board) -> None:
    """The cell processes' events into the view, until the None that ends them."""
    while (event := events.get()) is not None:
        board(event)


def _run_cells(cfg: ExperimentConfig, task, log, cells, events=None) -> Path:
    """The cells one after the other, or in the pool `cells` (longest first), then the summary."""
    check_for_training(cfg)  # the model, its chat template and LoRA targets: refused before the first cell
    pool, examples, probes = _read_inputs(cfg)
    exp_dir = cfg.experiment_dir
    write_text(exp_dir / "experiment.yaml", cfg.to_yaml())
    start = time.perf_counter()
    failures, diverged = _cells_in_view(cfg, task, (pool, examples, probes), cells, events)
    if cfg.qlora is not None:  # what is measured beside the QLoRA cells (ftscale/qlora_study.py)
        from .qlora_study import run_study

        failures += run_study(cfg, task, pool, examples, log)
    rows, hidden = audit(exp_dir, expected_inputs(cfg, task, pool, examples, probes))
    if rows and task.pairwise is not None:
        run_comparisons(exp_dir, task.pairwise, rows, log=log)
    if rows:
        report = write_report(exp_dir, task, cfg.cost, rows, hidden)
        log(f"done in {time.perf_counter() - start:.0f} s: {report}")
    problems = [f"{len(failures)} evaluation(s) failed and were not recorded as done (run the same command again "
                "to redo them):\n" + "\n".join(f.line() for f in failures)] if failures else []
    if diverged:
        problems.append(f"{len(diverged)} training(s) diverged and were stopped (not recorded as done):\n"
                        + "\n".join(diverged))
    if problems:
        raise StepsFailed("\n".join(problems))
    return exp_dir / "summary.md"

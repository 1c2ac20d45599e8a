"""Run a sweep: every cell of the grid trained (or an OpenAI job launched), evaluated at every
temperature and prompt variant, and recorded in the results store (`<sweep dir>/results.db`).

    ftscale sweep configs/sweeps/formatting-cpu.yaml            # the built-in loop, one cell after another
    ftscale sweep configs/sweeps/formatting-cpu.yaml --status   # done / running / failed / left, ETA
    ftscale sweep configs/sweeps/formatting-gpu.yaml --executor slurm --slurm-partition gpu   # one job per cell

A killed sweep started again skips finished cells and redoes only the others; inside a cell, a
training or evaluation whose completion record matches its inputs is not repeated (the cell
runner, ftscale/cellrunner.py, is the same as `ftscale run`'s). A failed cell is recorded with its
error in its own folder and the sweep goes on (exit code 1 at the end), unless --fail-fast. The
cells' files are the truth; results.db is an index rebuilt from them (ftscale/results_store.py).

One writer per cell: a process (the loop, or a scheduler's job) runs a cell only while it holds the
cell's claim (ftscale/claims.py). The loop leaves a cell another live process holds to it and waits
for its result at the end, so two sweeps of one folder, or a sweep beside scheduler jobs on several
nodes, train each cell once; a cell whose holder died is taken over.
"""

from __future__ import annotations

import os
import statistics
import time
import traceback
from dataclasses import dataclass, replace
from pathlib import Path

from tqdm.auto import tqdm

from .apikey import mask
from .atomic import write_text
from .cellrunner import (Answerer, audit_cell, captured_answerer, endpoint_answerer, ensure_captured, ensure_openai,
                         ensure_trained, eval_jobs, hf_answerer, run_evals)
from .chatdata import read_jsonl
from .claims import Claim, ClaimLost, describe
from .errors import FtscaleError, StepsFailed
from .eval.cost import add_costs
from .eval.pairwise_runs import run_comparisons
from .eval.result_row import ResultRow, loss_curve, result_rows
from .eval.tasks import Task
from .experiment import load_probes, task_for
from .models import check_for_training
from .prices import load_prices
from .results_store import WITH_ERROR, ResultsStore, cell_status, is_done, mark_done, mark_failed, mark_running
from .serve.evaluate_on_vllm import evaluate_on_vllm
from .train.divergence import Diverged
from .sweepconfig import Cell, expand, load_sweep

STORE = "results.db"
WAIT_S = 5.0  # how often a sweep looks again at the cells other processes are running


class Runner:
    def __init__(self, sweep_path: str | Path, log=print):
        self.sweep_path = Path(sweep_path)
        self.sweep, self.base = load_sweep(sweep_path)
        self.cells = expand(self.sweep, self.base)
        self.task = task_for(self.base, sorted({v for c in self.cells for v in c.variants}))
        self.pool = read_jsonl(self.base.data.train, "train")
        self.examples = read_jsonl(self.base.data.eval, "eval")[: self.base.eval.limit]
        self.probes = load_probes(self.base)
        self.log = log
        self.claims: dict[str, Claim] = {}  # the cells this process holds, by key
        self.left: set[str] = set()  # the cells found held by other processes

    def index(self) -> ResultsStore:
        """results.db rebuilt from the cells' files (the files are the truth)."""
        return ResultsStore.rebuild(self.sweep.sweep_dir / STORE, self.cells)

    def todo(self) -> list[Cell]:
        return [c for c in self.cells if not is_done(c.run_dir, c.key)]

    def reference(self, cell: Cell):
        return next(r for r in self.sweep.references if r.name == cell.system)

    # -- one cell ---------------------------------------------------------------------------------
    def train(self, cell: Cell) -> str | None:
        """The cell's training step (reused when its record matches); the model to ask for an OpenAI cell."""
        if cell.backend == "captured":  # migration: a recorded OpenAI fine-tune, nothing to train
            ref = self.reference(cell)
            ensure_captured(cell.cfg, ref.captured, ref.model, cell.run_dir)
            return None
        if cell.backend == "openai":
            return ensure_openai(cell.cfg, cell.n, cell.run_dir, log=self.log)["model"]
        system = next((s for s in self.sweep.systems if s.name == cell.system), None)
        ensure_trained(cell.cfg, cell.n, cell.run_dir, log=self.log,
                       accelerate_config=system.accelerate_config if system is not None else None)
        return None

    def evaluate(self, cell: Cell, answerer: Answerer) -> list[Path]:
        """Every evaluation the cell owes; raises StepsFailed when one failed (the cell is then failed)."""
        cfg = cell.cfg.model_copy(update={"eval": cell.cfg.eval.model_copy(update={"temperatures": list(cell.temperatures)})})
        jobs = eval_jobs(cfg, cell.run_dir, self.task, self.pool, self.examples, list(cell.variants), answerer, self.probes)
        failures = run_evals(cell.run_dir, jobs, answerer, self.pool, cfg.eval.few_shot_k, log=self.log)
        if failures:
            raise StepsFailed("; ".join(f.line() for f in failures))
        return [j.out_dir for j in jobs]

    def run_cell(self, cell: Cell, evaluate: bool = True, finish: bool = True) -> None:
        """Train and evaluate the cell; `finish`: mark it done (not when a vLLM evaluation follows)."""
        mark_running(cell.run_dir, cell.key)
        ft_model = self.train(cell)
        if not evaluate:
            return
        if cell.backend == "captured":  # migration: the fine-tune's recorded answers, replayed by example id
            ref = self.reference(cell)
            answerer = captured_answerer(ref.captured, ref.model)
        elif cell.backend == "openai":
            answerer = endpoint_answerer(ft_model, cell.cfg.openai.base_url, cell.cfg.serve.concurrency,
                                         api_key_env=cell.cfg.openai.api_key_env)
        else:
            answerer = self.in_process(cell)
        folders = self.evaluate(cell, answerer)
        if finish:
            self._done(cell, folders)

    def _done(self, cell: Cell, folders: list[Path]) -> None:
        """The cell's record, unless another process took its claim over meanwhile (ClaimLost)."""
        claim = self.claims.get(cell.key)
        if claim is not None:
            claim.check()
        mark_done(cell.run_dir, cell.key, folders)

    def in_process(self, cell: Cell) -> Answerer:
        return hf_answerer(cell.cfg, cell.run_dir / "adapter" if cell.n > 0 else None)

    # -- the built-in loop --------------------------------------------------------------------------
    def _guarded(self, cell: Cell, fn, fail_fast: bool) -> bool:
        try:
            fn()
            return True
        except KeyboardInterrupt:
            raise
        except ClaimLost as e:  # the cell is another process's now: nothing of this one is recorded
            self.log(str(e))
            return False
        except Diverged as e:  # the training was stopped: the cell is diverged, with the step, loss and knobs
            mark_failed(cell.run_dir, str(e), status="diverged")
            self.log(str(e))
            if fail_fast:
                raise FtscaleError(f"cell {cell.run_dir} diverged (--fail-fast): {e}") from e
            return False
        except Exception as e:  # one failed cell must not stop the others
            detail = mask(f"{type(e).__name__}: {e}")  # a provider's error may quote the key
            mark_failed(cell.run_dir, detail + "\n" + mask(traceback.format_exc(limit=5)))
            self.log(f"{cell.run_dir}: failed: {detail}")
            if fail_fast:
                raise FtscaleError(f"cell {cell.run_dir} failed (--fail-fast): {detail}") from e
            return False

    def run(self, fail_fast: bool = False) -> dict:
        """Every cell not done; returns the counts by status. Failed cells raise nothing here: the
        command turns them into exit code 1 after the report of the others."""
        write_text(self.sweep.sweep_dir / "sweep.yaml", self.sweep_path.read_text())
        write_text(self.sweep.sweep_dir / "command.txt", " ".join(["ftscale", "sweep", str(self.sweep_path)]) + "\n")
        todo = self.todo()
        for cfg in {c.cfg.model: c.cfg for c in todo if c.backend == "local"}.values():
            check_for_training(cfg)  # each local model, before any cell: reachable, a chat template, LoRA targets
        self.index().close()
        self.log(f"{self.sweep.name}: {len(self.cells)} cells, {len(self.cells) - len(todo)} done, {len(todo)} to run")
        held, told = self._run_claimed(todo, fail_fast), None
        while held:  # cells other processes (another sweep, a scheduler's job) run: their results, once
            if len(held) != told:
                self.log(f"waiting for {len(held)} cell(s) that other processes are running")
                told = len(held)
            time.sleep(WAIT_S)
            # a cell whose process died is run here; one it recorded as failed is not run again
            held = self._run_claimed([c for c in held if not is_done(c.run_dir, c.key)
                                      and cell_status(c.run_dir, c.key)["status"] not in WITH_ERROR], fail_fast)
        self.judge_pairs()
        store = self.index()
        counts = store.summary([c.key for c in self.cells])["counts"]
        store.close()
        return counts

    def _run_claimed(self, cells: list[Cell], fail_fast: bool) -> list[Cell]:
        """Each cell this process can claim (ftscale/claims.py), trained and evaluated; the cells other
        live processes hold are returned, untouched."""
        bar = tqdm(total=len(cells), desc=self.sweep.name, unit="cell")
        vllm_groups: dict[str, list[Cell]] = {}
        held = []
        try:
            for cell in cells:
                bar.set_postfix_str(f"{cell.system} n={cell.n} seed={cell.seed}")
                claim = Claim(cell.run_dir, "ftscale sweep")
                if not claim.acquire():
                    if cell.key not in self.left:  # said once, not at every look while waiting
                        self.log(f"{cell.run_dir}: left to {describe(claim.holder() or {})}")
                        self.left.add(cell.key)
                    held.append(cell)
                elif is_done(cell.run_dir, cell.key):  # finished by another process since the list was made
                    claim.release()
                else:
                    self.claims[cell.key] = claim
                    by_vllm = "vllm" in cell.eval_backends and cell.backend == "local"
                    in_process = not by_vllm or "hf" in cell.eval_backends
                    if self._guarded(cell, lambda c=cell: self.run_cell(c, evaluate=in_process, finish=not by_vllm),
                                     fail_fast) and by_vllm:
                        vllm_groups.setdefault(cell.cfg.model + "|" + cell.cfg.train.quantization, []).append(cell)
                    else:
                        self._release(cell)
                bar.update()
            bar.close()
            for group in vllm_groups.values():
                self._evaluate_on_vllm(group, fail_fast)
        finally:
            for key in list(self.claims):
                self.claims.pop(key).release()
        return held

    def _release(self, cell: Cell) -> None:
        claim = self.claims.pop(cell.key, None)
        if claim is not None:
            claim.release()

    def judge_pairs(self) -> None:
        """The task's double-blind pairwise judgements between the finished evaluations: every
        fine-tune (each seed) against every untrained system at the same temperature."""
        if self.task.pairwise is None:
            return
        # one sweep of the folder at a time judges: a second one waits, then finds the judgements made
        with Claim(self.sweep.sweep_dir, "ftscale sweep (pairwise judgements)").wait():
            # the finished cells' rows only: no other cell's, and no costs, are needed to judge them
            rows = [r for c in self.cells if is_done(c.run_dir, c.key) for r in _cell_rows(c, "done")]
            run_comparisons(self.sweep.sweep_dir, self.task.pairwise, rows, log=self.log)

    def _evaluate_on_vllm(self, cells: list[Cell], fail_fast: bool) -> None:
        """One server per base model, every adapter of that base loaded as a LoRA module."""
        cfg = cells[0].cfg
        adapters = {c.run_dir.name: c.run_dir for c in cells if c.n > 0}
        log_path = self.sweep.sweep_dir / "vllm" / f"{cfg.model.replace('/', '_')}.log"
        with evaluate_on_vllm(cfg, log_path, adapters) as vllm:
            for cell in cells:
                answerer = vllm.answerer(cell.cfg, cell.cfg.serve.concurrency,
                                         lora=cell.run_dir.name if cell.n > 0 else None)
                self._guarded(cell, lambda c=cell, a=answerer: self._done(c, self._both(c, a)), fail_fast)

    def _both(self, cell: Cell, answerer: Answerer) -> list[Path]:
        """The cell's vLLM evaluations, and its in-process ones when it owes both (done by then: only named)."""
        folders = self.evaluate(cell, answerer)
        return (self.evaluate(cell, self.in_process(cell)) if "hf" in cell.eval_backends else []) + folders


def status(sweep_path: str | Path) -> str:
    """Done / running / failed / left, with an ETA from the measured durations of finished cells."""
    sweep, base = load_sweep(sweep_path)
    cells = expand(sweep, base)
    store = ResultsStore.rebuild(sweep.sweep_dir / STORE, cells)
    summary = store.summary([c.key for c in cells])
    store.close()
    counts, mine = summary["counts"], summary["rows"]
    durations: dict[int, list[float]] = {}
    for r in mine:
        if r["status"] == "done" and r["duration_s"]:
            durations.setdefault(r["n"], []).append(r["duration_s"])
    overall = [d for ds in durations.values() for d in ds]
    left = [r for r in mine if r["status"] in ("pending", "running")]
    if overall:
        eta = sum(statistics.median(durations.get(r["n"], overall)) for r in left)
        eta_text = f"ETA {eta / 60:.0f} min (from the median time of finished cells of the same size)"
    else:
        eta_text = "ETA unknown until a cell finishes"
    lines = [f"{sweep.name} ({sweep.sweep_dir}): {len(cells)} cells: {counts['done']} done, {counts['running']} running, "
             f"{counts['failed']} failed, " + (f"{counts['diverged']} diverged, " if counts["diverged"] else "")
             + f"{counts['pending']} left; {eta_text}"]
    for r in mine:
        if r["status"] in ("failed", "diverged", "running"):
            what = (r["error"] or "").splitlines()[0] if r["status"] != "running" else f"on {r['host']} pid {r['pid']}"
            lines.append(f"  {r['status']}: {r['system']} n={r['n']} seed={r['seed']} ({r['run_dir']}): {what}")
    return "\n".join(lines)


def status_counts(sweep_path: str | Path) -> dict:
    sweep, base = load_sweep(sweep_path)
    cells = expand(sweep, base)
    store = ResultsStore.rebuild(sweep.sweep_dir / STORE, cells)
    counts = store.summary([c.key for c in cells])["counts"]
    store.close()
    return counts


def run_one(sweep_path: str, key: str) -> str:
    """One cell, as a scheduler job runs it (submitit pickles this function and its arguments). It
    writes only its own cell's files, never the shared index, and only while it holds the cell's claim:
    a cell another live process holds is left to it."""
    _keep_to_allocated_cores()
    runner = Runner(sweep_path)
    cell = next(c for c in runner.cells if c.key == key)
    claim = Claim(cell.run_dir, "ftscale sweep job")
    if not claim.acquire():
        return f"left to {describe(claim.holder() or {})}"
    runner.claims[cell.key] = claim
    try:
        if is_done(cell.run_dir, cell.key):
            return "already done"
        if runner._guarded(cell, lambda: runner.run_cell(cell), fail_fast=True):
            return "done"
        return "failed"
    finally:
        runner._release(cell)


def _keep_to_allocated_cores() -> None:
    """In a SLURM job, compute on as many threads as cores were allocated (SLURM_CPUS_PER_TASK): without
    cgroups nothing else stops PyTorch from using every core of the node, and its threads, spinning
    while they wait for one another, slow jobs sharing a node down far more than their share."""
    cpus = os.environ.get("SLURM_CPUS_PER_TASK")
    if cpus and cpus.isdigit():
        import torch

        os.environ["OMP_NUM_THREADS"] = cpus  # the processes it starts (accelerate) too
        torch.set_num_threads(int(cpus))


def submit(sweep_path: str | Path, cluster: str, timeout_min: int | None = None, partition: str | None = None,
           gpus_per_node: int | None = None, log=print, max_parallel: int = 1) -> list:
    """Hand every unfinished cell to a scheduler through submitit (one job per cell); the cells'
    own files are where the jobs meet. `cluster`: slurm, or local / debug to try it on this machine:
    local runs at most `max_parallel` jobs at once and waits for them; debug runs each job in this
    process (submitit's debug jobs run only when their result is asked for). The job's resources are
    the sweep's `slurm:` section (no GPU unless it asks for one); the arguments given override it.
    A cell a live job (or sweep) holds is not submitted again."""
    try:
        import submitit
    except ImportError:
        raise FtscaleError("--executor needs submitit: pip install submitit") from None
    runner = Runner(sweep_path, log=log)
    todo = []
    for cell in runner.todo():
        holder = Claim(cell.run_dir).holder()
        if holder is None:
            todo.append(cell)
        else:
            log(f"{cell.run_dir}: not submitted, {describe(holder)} is running it")
    executor = submitit.AutoExecutor(folder=runner.sweep.sweep_dir / "submitit" / "%j", cluster=cluster)
    slurm = runner.sweep.slurm
    params = {"timeout_min": timeout_min or slurm.timeout_min, "name": f"ftscale-{runner.sweep.name}"}
    if cluster == "slurm":
        gpus = slurm.gpus_per_node if gpus_per_node is None else gpus_per_node
        asked = {"slurm_partition": partition or slurm.partition, "gpus_per_node": gpus or None,
                 "cpus_per_task": slurm.cpus_per_task, "mem_gb": slurm.mem_gb}
        params |= {k: v for k, v in asked.items() if v is not None}  # left out: the cluster's default
    executor.update_parameters(**params)
    target = str(Path(sweep_path).resolve())
    if cluster == "slurm":
        if not todo:
            log("nothing to submit: every cell is done or running")
            return []
        with executor.batch():
            jobs = [executor.submit(run_one, target, c.key) for c in todo]
        log(f"submitted {len(jobs)} jobs to slurm (logs in {runner.sweep.sweep_dir / 'submitit'}); "
            f"follow with `ftscale sweep {sweep_path} --status`")
        return jobs
    jobs = []
    for start in range(0, len(todo), max_parallel if cluster == "local" else 1):
        wave = [executor.submit(run_one, target, c.key) for c in todo[start:start + max(1, max_parallel)]]
        for job in wave:
            log(f"job {job.job_id}: {job.result()}")  # waits; a debug job runs here
        jobs += wave
    runner.index().close()
    return jobs


@dataclass
class SweepResults:
    """A sweep's rows (every cell, finished or not), its task, and the cost context of its finished rows
    (None when none finished)."""

    rows: list[ResultRow]
    task: Task
    cost: dict | None


def _cell_rows(cell: Cell, status: str, error: str | None = None) -> list[ResultRow]:
    """A cell's rows: a finished cell's shown evaluations, as the sweep names them; one row per temperature
    and prompt variant of a cell that did not finish, marked with its status and without values."""
    facts = {"in_sweep": True, "is_reference": cell.kind != "train", "error": error,
             "status": status if status != "pending" else "missing"}
    # every cell's folders are audited, done or not: one edited after its record is refused here
    shown = audit_cell(cell.run_dir)[0] if (cell.run_dir / "config.yaml").is_file() else []
    if status == "done":
        return [replace(r, **facts, system=_system(cell, r.backend)) for r in result_rows(cell.run_dir, shown)]
    several = len(cell.eval_backends) > 1
    return [ResultRow(**facts, system=_system(cell, b), backend=b if several else cell.backend, model=cell.cfg.model,
                      num_train_examples=cell.n, seed=cell.seed, prompt_variant=v, temperature=t,
                      run_dir=str(cell.run_dir), quantization=cell.cfg.train.quantization, loss=loss_curve(cell.run_dir))
            for b in (cell.eval_backends if several else (None,)) for t in cell.temperatures for v in cell.variants]


def _system(cell: Cell, backend: str | None) -> str:
    """A row's curve: the cell's system (its untrained base: a reference line of its own, not a point of the
    fine-tune's curve), with the backend that answered when the cell is evaluated on several."""
    name = f"{cell.system} base" if cell.kind == "base" else cell.system
    return f"{name} ({backend})" if len(cell.eval_backends) > 1 else name


def sweep_rows(sweep_dir: Path, cost: dict | None = None) -> SweepResults:
    """Every cell of the sweep as report rows: finished cells with their scores and costs, the others
    marked with their status and error (never dropped). `cost`: keys of the base's `cost` section set
    for this report (`ftscale report DIR --prices FILE`)."""
    sweep_dir = Path(sweep_dir)
    sweep, base = load_sweep(sweep_dir / "sweep.yaml")
    cells = expand(sweep, base)
    task = task_for(base, sorted({v for c in cells for v in c.variants}))
    store = ResultsStore.rebuild(sweep_dir / STORE, cells)
    records = {r["key"]: r for r in store.all()}
    store.close()
    rows = []
    for cell in cells:
        rec = records.get(cell.key) or {"status": "pending", "error": None}
        rows += _cell_rows(cell, rec["status"], rec["error"])
    done = [r for r in rows if r.status == "done"]
    spec = base.cost.model_validate(base.cost.model_dump() | (cost or {})) if cost else base.cost
    costs = add_costs(done, load_prices(spec.prices), spec) if done else None
    return SweepResults(rows, task, costs)


def write_report(sweep_dir: Path, command: str, cost: dict | None = None) -> tuple[Path, Path]:
    # not at the top: the report loads matplotlib (about a second) that `ftscale sweep --status` never needs
    from .eval.sweep_report import write_sweep_report

    results = sweep_rows(sweep_dir, cost)
    made_by = Path(sweep_dir) / "command.txt"
    if made_by.is_file():
        command = made_by.read_text().strip() + "\n" + command
    return write_sweep_report(Path(sweep_dir), results.rows, results.task, results.cost,
                              {"command": command, "sweep_dir": str(sweep_dir), "store": str(Path(sweep_dir) / STORE)})

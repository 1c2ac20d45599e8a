"""Run a sweep: every cell of the grid trained (or an OpenAI job launched), evaluated at every
temperature and prompt variant, and recorded in the results store (`<sweep dir>/results.db`).

    ftscale sweep configs/sweeps/formatting-cpu.yaml            # the built-in loop, one cell after another
    ftscale sweep configs/sweeps/formatting-cpu.yaml --status   # done / running / failed / left, ETA
    ftscale sweep configs/sweeps/formatting-gpu.yaml --executor slurm --slurm-partition gpu   # one job per cell

A killed sweep started again skips finished cells and redoes only the others (a cell's own steps
resume too: a finished training or evaluation on disk is not repeated). A failed cell is recorded
with its error and the sweep goes on, unless --fail-fast.
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import traceback
from pathlib import Path

from tqdm.auto import tqdm

from .atomic import write_text
from .chatdata import read_jsonl
from .errors import FtscaleError
from .results_store import ResultsStore
from .sweepconfig import Cell, expand, load_sweep

STORE = "results.db"


class Runner:
    def __init__(self, sweep_path: str | Path, log=print):
        from .experiment import load_probes, task_for

        self.sweep_path = Path(sweep_path)
        self.sweep, self.base = load_sweep(sweep_path)
        self.cells = expand(self.sweep, self.base)
        self.task = task_for(self.base, sorted({v for c in self.cells for v in c.variants}))
        self.pool = read_jsonl(self.base.data.train, "train")
        self.examples = read_jsonl(self.base.data.eval, "eval")[: self.base.eval.limit]
        self.probes = load_probes(self.base)
        self.store = ResultsStore(self.sweep.sweep_dir / STORE)
        self.store.register(self.cells)
        self.log = log

    # -- one cell ---------------------------------------------------------------------------------
    def train(self, cell: Cell) -> str | None:
        """Train (or launch) the cell; return the model to evaluate for an OpenAI cell."""
        from .train import openai_ft
        from .train.sft import train

        if cell.backend == "captured":  # migration: a recorded OpenAI fine-tune, nothing to train
            write_text(cell.run_dir / "config.yaml", cell.cfg.cell_yaml(0))
            return None
        if cell.backend == "openai":
            if cell.kind == "train":
                state = openai_ft.launch(cell.cfg, cell.n, cell.run_dir, yes=True, log=self.log)
                return state["fine_tuned_model"]
            write_text(cell.run_dir / "config.yaml", cell.cfg.cell_yaml(0))
            return cell.cfg.openai.model
        system = next((s for s in self.sweep.systems if s.name == cell.system), None)
        if system is not None and system.accelerate_config and cell.n > 0:
            self._train_under_accelerate(cell, system.accelerate_config)
        else:
            train(cell.cfg, cell.n, cell.run_dir)
        return None

    def _train_under_accelerate(self, cell: Cell, accelerate_config: Path) -> None:
        from .rundir import trained

        if trained(cell.run_dir):
            return
        cfg_file = write_text(cell.run_dir / "config.yaml", cell.cfg.cell_yaml(cell.n))
        cmd = [str(Path(sys.executable).parent / "accelerate"), "launch", "--config_file", str(accelerate_config),
               str(Path(__file__).resolve().parents[1] / "train" / "sft.py"), "--config", str(cfg_file),
               "--output_dir", str(cell.run_dir)]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            raise FtscaleError(f"accelerate launch failed ({proc.returncode}): {proc.stderr[-2000:]}")

    def evaluate(self, cell: Cell, make_backend, backend: str) -> None:
        from .experiment import evaluate_cell

        cfg = cell.cfg.model_copy(update={"eval": cell.cfg.eval.model_copy(update={"temperatures": list(cell.temperatures)})})
        evaluate_cell(cfg, cell.run_dir, make_backend, self.task, self.pool, self.examples, list(cell.variants),
                      backend=backend, probes=self.probes, log=self.log)

    def run_cell(self, cell: Cell, evaluate: bool = True) -> None:
        from .eval.backends import make_backend
        from .experiment import hf_backend_factory

        self.store.start(cell.key)
        ft_model = self.train(cell)
        if not evaluate:
            return
        if cell.backend == "captured":  # migration: the fine-tune's recorded answers, replayed by example id
            ref = next(r for r in self.sweep.references if r.name == cell.system)
            self.evaluate(cell, lambda: make_backend("captured", path=ref.captured, model=ref.model), "captured")
        elif cell.backend == "openai":
            cfg = cell.cfg
            factory = lambda: make_backend("openai", model=ft_model, base_url=cfg.openai.base_url,  # noqa: E731
                                           concurrency=cfg.serve.concurrency)
            self.evaluate(cell, factory, "openai")
        else:
            adapter = cell.run_dir / "adapter" if cell.n > 0 else None
            self.evaluate(cell, hf_backend_factory(cell.cfg, adapter), "hf")
        self.store.done(cell.key)

    # -- the built-in loop --------------------------------------------------------------------------
    def _guarded(self, cell: Cell, fn, fail_fast: bool) -> bool:
        try:
            fn()
            return True
        except KeyboardInterrupt:
            raise
        except Exception as e:  # one failed cell must not stop the others
            detail = f"{type(e).__name__}: {e}"
            self.store.failed(cell.key, detail + "\n" + traceback.format_exc(limit=5))
            self.log(f"{cell.run_dir}: failed: {detail}")
            if fail_fast:
                raise FtscaleError(f"cell {cell.run_dir} failed (--fail-fast): {detail}") from e
            return False

    def run(self, fail_fast: bool = False) -> dict:
        write_text(self.sweep.sweep_dir / "sweep.yaml", self.sweep_path.read_text())
        write_text(self.sweep.sweep_dir / "command.txt", " ".join(["ftscale", "sweep", str(self.sweep_path)]) + "\n")
        todo = [c for c in self.cells if (self.store.get(c.key) or {}).get("status") != "done"]
        self.log(f"{self.sweep.name}: {len(self.cells)} cells, {len(self.cells) - len(todo)} done, {len(todo)} to run")
        bar = tqdm(total=len(todo), desc=self.sweep.name, unit="cell")
        vllm_groups: dict[str, list[Cell]] = {}
        for cell in todo:
            bar.set_postfix_str(f"{cell.system} n={cell.n} seed={cell.seed}")
            by_vllm = self.sweep.eval_backend == "vllm" and cell.backend == "local"
            if self._guarded(cell, lambda c=cell: self.run_cell(c, evaluate=not by_vllm), fail_fast) and by_vllm:
                vllm_groups.setdefault(cell.cfg.model + "|" + cell.cfg.train.quantization, []).append(cell)
            bar.update()
        bar.close()
        for cells in vllm_groups.values():
            self._evaluate_on_vllm(cells, fail_fast)
        self.judge_pairs()
        return self.store.summary([c.key for c in self.cells])["counts"]

    def judge_pairs(self) -> None:
        """The task's double-blind pairwise judgements between the finished evaluations: every
        fine-tune (each seed) against every untrained system at the same temperature."""
        if self.task.pairwise is None:
            return
        from .eval.pairwise_runs import run_comparisons

        rows, _, _ = sweep_rows(self.sweep.sweep_dir)
        run_comparisons(self.sweep.sweep_dir, self.task.pairwise, [r for r in rows if r["status"] == "done"], log=self.log)

    def _evaluate_on_vllm(self, cells: list[Cell], fail_fast: bool) -> None:
        """One server per base model, every adapter of that base loaded as a LoRA module."""
        from .eval.backends import make_backend
        from .serve.server import server_for

        adapters = {c.run_dir.name: c.run_dir for c in cells if c.n > 0}
        log_path = self.sweep.sweep_dir / "vllm" / f"{cells[0].cfg.model.replace('/', '_')}.log"
        with server_for(cells[0].cfg, adapters or None, log_path) as server:
            for cell in cells:
                name = cell.run_dir.name if cell.n > 0 else server.served_name
                factory = lambda n=name, c=cell: make_backend(  # noqa: E731
                    "openai", name="vllm", model=n, base_url=server.base_url, concurrency=c.cfg.serve.concurrency)
                if self._guarded(cell, lambda c=cell, f=factory: self.evaluate(c, f, "vllm"), fail_fast):
                    self.store.done(cell.key)


def status(sweep_path: str | Path) -> str:
    """Done / running / failed / left, with an ETA from the measured durations of finished cells."""
    sweep, base = load_sweep(sweep_path)
    cells = expand(sweep, base)
    store = ResultsStore(sweep.sweep_dir / STORE)
    store.register(cells)
    summary = store.summary([c.key for c in cells])
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
             f"{counts['failed']} failed, {counts['pending']} left; {eta_text}"]
    for r in mine:
        if r["status"] in ("failed", "running"):
            what = (r["error"] or "").splitlines()[0] if r["status"] == "failed" else f"on {r['host']} pid {r['pid']}"
            lines.append(f"  {r['status']}: {r['system']} n={r['n']} seed={r['seed']} ({r['run_dir']}): {what}")
    store.close()
    return "\n".join(lines)


def run_one(sweep_path: str, key: str) -> str:
    """One cell, as a scheduler job runs it (submitit pickles this function and its arguments)."""
    runner = Runner(sweep_path)
    cell = next(c for c in runner.cells if c.key == key)
    if (runner.store.get(key) or {}).get("status") == "done":
        return "already done"
    if runner._guarded(cell, lambda: runner.run_cell(cell), fail_fast=True):
        return "done"
    return "failed"


def submit(sweep_path: str | Path, cluster: str, timeout_min: int, partition: str | None, gpus_per_node: int,
           log=print) -> list:
    """Hand every unfinished cell to a scheduler through submitit (one job per cell); the results
    store is where the jobs meet. `cluster`: slurm, or local / debug to try it on this machine."""
    try:
        import submitit
    except ImportError:
        raise FtscaleError("--executor needs submitit: pip install submitit") from None
    runner = Runner(sweep_path, log=log)
    todo = [c for c in runner.cells if (runner.store.get(c.key) or {}).get("status") != "done"]
    executor = submitit.AutoExecutor(folder=runner.sweep.sweep_dir / "submitit" / "%j", cluster=cluster)
    params = {"timeout_min": timeout_min, "name": f"ftscale-{runner.sweep.name}"}
    if cluster == "slurm":
        params |= {"slurm_partition": partition, "gpus_per_node": gpus_per_node} if partition else {"gpus_per_node": gpus_per_node}
    executor.update_parameters(**params)
    with executor.batch():
        jobs = [executor.submit(run_one, str(Path(sweep_path).resolve()), c.key) for c in todo]
    log(f"submitted {len(jobs)} jobs to {cluster} (logs in {runner.sweep.sweep_dir / 'submitit'}); "
        f"follow with `ftscale sweep {sweep_path} --status`")
    return jobs



def _latency(generations: Path) -> dict | None:
    import json

    from .serve.latency import percentile

    recs = [json.loads(line) for line in open(generations)]
    ttft = [r["ttft_s"] for r in recs if r.get("ttft_s") is not None and r["error"] is None]
    e2e = [r["latency_s"] for r in recs if r.get("latency_s") is not None and r["error"] is None]
    if not e2e:
        return None
    return {"ttft_p50": percentile(ttft, 50) if ttft else None, "ttft_p90": percentile(ttft, 90) if ttft else None,
            "e2e_p50": percentile(e2e, 50), "e2e_p90": percentile(e2e, 90)}


def _loss(run_dir: Path) -> list[float] | None:
    import json

    path = run_dir / "loss.jsonl"
    return [json.loads(line)["loss"] for line in open(path)] if path.is_file() else None


def sweep_rows(sweep_dir: Path) -> tuple[list[dict], object, object]:
    """Every cell of the sweep as report rows: finished cells with their scores, the others marked
    with their status and error (never dropped)."""
    from .eval.cost import add_costs
    from .eval.report import cell_rows
    from .experiment import task_for
    from .prices import load_prices

    sweep_dir = Path(sweep_dir)
    sweep, base = load_sweep(sweep_dir / "sweep.yaml")
    cells = expand(sweep, base)
    task = task_for(base, sorted({v for c in cells for v in c.variants}))
    store = ResultsStore(sweep_dir / STORE)
    records = {r["key"]: r for r in store.all()}
    store.close()
    done, rows = [], []
    for cell in cells:
        rec = records.get(cell.key) or {"status": "pending", "error": None}
        # the untrained base is a reference line of its own, not a point of the fine-tune's curve
        system = f"{cell.system} base" if cell.kind == "base" else cell.system
        common = {"system": system, "run_dir": str(cell.run_dir), "reference": cell.kind != "train",
                  "status": rec["status"] if rec["status"] != "pending" else "missing", "error": rec["error"]}
        if rec["status"] == "done":
            for r in cell_rows(cell.run_dir):
                r |= common | {"loss": _loss(cell.run_dir), "latency": _latency(Path(r["generations"]))}
                done.append(r)
                rows.append(r)
        else:
            for t in cell.temperatures:
                for v in cell.variants:
                    rows.append(common | {"num_train_examples": cell.n, "seed": cell.seed, "prompt_variant": v,
                                          "temperature": t, "backend": cell.backend, "model": cell.cfg.model,
                                          "loss": _loss(cell.run_dir), "latency": None,
                                          **{m.name: None for m in task.metrics}})
    cost_ctx = add_costs(done, load_prices(base.cost.prices), base.cost) if done else None
    return rows, task, cost_ctx


def write_report(sweep_dir: Path, command: str) -> tuple[Path, Path]:
    from .eval.sweep_report import write_sweep_report

    rows, task, cost_ctx = sweep_rows(sweep_dir)
    made_by = Path(sweep_dir) / "command.txt"
    if made_by.is_file():
        command = made_by.read_text().strip() + "\n" + command
    return write_sweep_report(Path(sweep_dir), rows, task, cost_ctx,
                              {"command": command, "sweep_dir": str(sweep_dir), "store": str(Path(sweep_dir) / STORE)})

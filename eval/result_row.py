"""One evaluation's result, typed: the row that the experiment summary, the sweep report, the cost model,
the pairwise comparisons and the migration report all read, built once from a run directory.

A row is one shown evaluation (prompt variant, backend, temperature) of one cell (run directory), with the
general-ability probes asked beside it at the same backend and temperature, its latency (eval/latency.py),
its cell's training facts, the inputs of the cost model, and the cost fields eval/cost.py fills in. In a
sweep, a cell that did not finish has rows too, marked with its status and without values.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from ftscale.rundir import TRAIN_METRICS, read_json

from .evaluate import SCORES, TIMING
from .latency import Latency, latency_of

LOSS = "loss.jsonl"


@dataclass(frozen=True)
class Probes:
    """The general-ability probes (`eval.probes`) asked beside an evaluation: each metric's mean, how many
    probes were asked, and their generations file."""

    metrics: dict[str, float | None]
    n: int
    generations: str


@dataclass
class ResultRow:
    """One (cell, prompt variant, backend, temperature): its identity, its scores, and what it cost."""

    # the curve it belongs to: the backend (hf, vllm, "openai <model>") in an experiment, the system's name in a
    # sweep (its untrained base: "<name> base")
    system: str
    backend: str  # the backend kind that answered (hf, vllm, openai, captured; a sweep cell not done: its cell's)
    model: str
    num_train_examples: int
    seed: int
    prompt_variant: str
    temperature: float
    cell: str | None = None
    run_dir: str | None = None
    # the base's quantization in its training (4bit: QLoRA, whose in-process answers come from the 4-bit base)
    quantization: str = "none"
    in_sweep: bool = False  # a sweep's row: comparisons name it by its system
    is_reference: bool = False  # a reference line (a sweep's untrained base or prompted model), not a curve's point
    status: str = "done"  # done, or (a sweep cell that did not finish) failed, diverged, missing, running
    error: str | None = None
    n_eval: int | None = None
    failed: int | None = None
    metrics: dict[str, float | None] = field(default_factory=dict)
    not_scorable: dict[str, int] = field(default_factory=dict)
    probes: Probes | None = None
    latency: Latency | None = None
    generations: str | None = None
    # the cell's training
    train_wall_time_s: float | None = None
    train_tokens_per_s: float | None = None
    train_machine: dict | None = None
    trained_tokens: int | None = None
    estimated_billed_tokens: int | None = None
    loss: list[float] | None = None
    # the cost model's inputs
    mean_output_tokens: float | None = None
    mean_input_tokens: float | None = None
    eval_wall_time_s: float | None = None
    eval_requests: int | None = None
    eval_machine: dict | None = None
    # filled in by eval/cost.py (add_costs)
    training_cost_usd: float | None = None
    cost_basis: str | None = None
    cost_per_1k_requests_usd: float | None = None
    break_even_requests: int | str | None = None

    def metric(self, name: str) -> float | None:
        """A task metric's mean, or a probe metric's (`probes.<metric>`); None when the row has no value."""
        if name.startswith("probes."):
            return self.probes.metrics.get(name.removeprefix("probes.")) if self.probes else None
        return self.metrics.get(name)

    def metric_generations(self, name: str) -> str | None:
        """The generations file a metric's per-example scores are in: the probes' for `probes.<metric>`."""
        if name.startswith("probes."):
            return self.probes.generations if self.probes else None
        return self.generations

    @property
    def measured_latency(self) -> Latency | None:
        """The row's latency when it finished and timed its answers (an end-to-end time per request)."""
        done = self.status == "done" and self.latency is not None and self.latency.e2e_s is not None
        return self.latency if done else None

    def as_json(self) -> dict:
        """The row under the keys results.json has always had (users read that file): the system as
        `backend`, the metrics and `probes.<metric>` as keys of their own, the median latency."""
        probes = ({f"probes.{k}": v for k, v in self.probes.metrics.items()}
                  | {"probes.n": self.probes.n, "probes_generations": self.probes.generations}) if self.probes else {}
        e2e = self.latency.e2e_s if self.latency else None
        return {
            "cell": self.cell, "num_train_examples": self.num_train_examples, "seed": self.seed,
            "prompt_variant": self.prompt_variant, "backend": self.system, "model": self.model,
            "temperature": self.temperature, "n_eval": self.n_eval, "failed": self.failed, **self.metrics,
            "not_scorable": self.not_scorable, **probes, "median_latency_s": e2e.p50 if e2e else None,
            "mean_output_tokens": self.mean_output_tokens, "mean_input_tokens": self.mean_input_tokens,
            "train_wall_time_s": self.train_wall_time_s, "train_tokens_per_s": self.train_tokens_per_s,
            "train_machine": self.train_machine, "trained_tokens": self.trained_tokens,
            "estimated_billed_tokens": self.estimated_billed_tokens, "eval_wall_time_s": self.eval_wall_time_s,
            "eval_requests": self.eval_requests, "eval_machine": self.eval_machine, "generations": self.generations,
            "training_cost_usd": self.training_cost_usd, "cost_basis": self.cost_basis,
            "cost_per_1k_requests_usd": self.cost_per_1k_requests_usd, "break_even_requests": self.break_even_requests,
        }


def probe_metrics(rows: list[ResultRow]) -> list[str]:
    """The `probes.<metric>` columns the rows carry, in order."""
    return list(dict.fromkeys(f"probes.{k}" for r in rows if r.probes for k in r.probes.metrics))


def loss_curve(run_dir: Path) -> list[float] | None:
    """The training loss as logged, step by step; None when the cell has not trained (or logged) yet."""
    path = Path(run_dir) / LOSS
    return [json.loads(line)["loss"] for line in open(path)] if path.is_file() else None


def _temperature(scores: dict, cfg: dict) -> float:
    return (scores.get("sampling") or {}).get("temperature", cfg["eval"]["temperature"])


def _probes(folders: list[Path], cfg: dict) -> dict[tuple[str, float], Probes]:
    """The probes of a cell's shown probe folders, by (backend, temperature)."""
    out = {}
    for folder in folders:
        scores = read_json(folder / SCORES)
        out[(scores["backend"], _temperature(scores, cfg))] = Probes(
            dict(scores["metrics"]), scores["n"], str(folder / "generations.jsonl"))
    return out


def _latency(scores: dict, generations: Path) -> Latency:
    """The latency the evaluation recorded; an evaluation made before it recorded one: the same definition
    applied to its generations."""
    if "latency" in scores:
        return Latency.from_dict(scores["latency"])
    with open(generations, encoding="utf-8") as f:
        return latency_of(json.loads(line) for line in f)


def result_rows(cell: Path, shown: list[Path]) -> list[ResultRow]:
    """One row per shown evaluation of a run directory, with the probes asked at the same backend and
    temperature beside it. `shown`: the folders `cellrunner.audit_cell` let through."""
    cfg = yaml.safe_load((cell / "config.yaml").read_text())
    train = read_json(cell / TRAIN_METRICS) or {}
    probes = _probes([f for f in shown if f.name.startswith("probes")], cfg)
    loss = loss_curve(cell)
    rows = []
    for folder in (f for f in shown if f.name.startswith("eval-")):
        scores = read_json(folder / SCORES)
        timing = read_json(folder / TIMING) or {}
        generations = folder / "generations.jsonl"
        temperature = _temperature(scores, cfg)
        # One curve per system: a local backend, or an OpenAI model family (its base and its fine-tunes)
        system = scores["backend"] if scores["backend"] != "openai" else f"openai {cfg['openai']['model']}"
        rows.append(ResultRow(
            system=system, backend=scores["backend"], model=scores["model"],
            num_train_examples=cfg["num_train_examples"], seed=cfg["train"]["seed"],
            prompt_variant=scores["prompt_variant"], temperature=temperature, cell=cell.name, run_dir=str(cell),
            quantization=cfg["train"].get("quantization", "none"),
            n_eval=scores["n"], failed=scores["failed"], metrics=dict(scores["metrics"]),
            not_scorable=scores.get("not_scorable", {}), probes=probes.get((scores["backend"], temperature)),
            latency=_latency(scores, generations), generations=str(generations),
            train_wall_time_s=train.get("wall_time_s"), train_tokens_per_s=train.get("train_tokens_per_s"),
            train_machine=train.get("machine"), trained_tokens=train.get("trained_tokens"),
            estimated_billed_tokens=train.get("estimated_billed_tokens"), loss=loss,
            mean_output_tokens=scores["mean_output_tokens"], mean_input_tokens=scores.get("mean_input_tokens"),
            eval_wall_time_s=timing.get("wall_time_s"), eval_requests=timing.get("requests"),
            eval_machine=timing.get("machine")))
    return rows

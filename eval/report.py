"""The experiment summary: a Markdown table and a PNG scaling plot, built from run directories only."""

from __future__ import annotations

from pathlib import Path

import yaml

from ftscale.atomic import atomic_path, write_json, write_text
from ftscale.rundir import TRAIN_METRICS, read_json

from .tasks import Task


def collect(exp_dir: Path) -> list[dict]:
    """One row per (cell, prompt variant) that has scores."""
    rows = []
    for cell in sorted(p for p in Path(exp_dir).iterdir() if (p / "config.yaml").is_file()):
        cfg = yaml.safe_load((cell / "config.yaml").read_text())
        train = read_json(cell / TRAIN_METRICS) or {}
        for scores_path in sorted(cell.glob("eval-*/scores.json")):
            scores = read_json(scores_path)
            # One curve per system: a local backend, or an OpenAI model family (its base and its fine-tunes)
            system = scores["backend"] if scores["backend"] != "openai" else f"openai {cfg['openai']['model']}"
            rows.append({
                "cell": cell.name, "num_train_examples": cfg["num_train_examples"], "seed": cfg["train"]["seed"],
                "prompt_variant": scores["prompt_variant"], "backend": system, "model": scores["model"],
                "n_eval": scores["n"],
                "failed": scores["failed"], **scores["metrics"],
                "median_latency_s": scores["median_latency_s"], "mean_output_tokens": scores["mean_output_tokens"],
                "train_wall_time_s": train.get("wall_time_s"), "train_tokens_per_s": train.get("train_tokens_per_s"),
                "generations": str(scores_path.parent / "generations.jsonl"),
            })
    rows.sort(key=lambda r: (r["backend"], r["prompt_variant"], r["num_train_examples"], r["seed"]))
    return rows


def _fmt(v, digits=3):
    if v is None:
        return "–"
    return f"{v:.{digits}f}" if isinstance(v, float) else str(v)


def plot(rows: list[dict], task: Task, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metrics = task.headline or tuple(m.name for m in task.metrics)
    fig, axes = plt.subplots(1, len(metrics), figsize=(4.6 * len(metrics), 3.6), squeeze=False)
    sizes = sorted({r["num_train_examples"] for r in rows})
    positive = [s for s in sizes if s > 0]
    for ax, metric in zip(axes[0], metrics):
        for backend, variant in sorted({(r["backend"], r["prompt_variant"]) for r in rows}):
            pts = sorted((r["num_train_examples"], r[metric]) for r in rows
                         if (r["backend"], r["prompt_variant"]) == (backend, variant))
            if {p[0] for p in pts} == {0}:  # a base-only baseline: a reference line, not a curve
                ax.axhline(pts[0][1], linestyle="--", color="grey", label=f"base, {variant} prompt ({backend})")
            else:
                ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=f"{backend}, prompt: {variant}")
        # symlog keeps n=0 (the untrained base) on a log-like axis of training sizes
        ax.set_xscale("symlog", linthresh=min(positive) if positive else 1)
        ax.set_xticks(sizes, [str(s) for s in sizes])
        ax.set_ylim(-0.03, 1.03)
        ax.set_xlabel("training examples (0 = base model)")
        ax.set_ylabel(metric)
        ax.set_title(metric.replace("_", " "))
        ax.grid(alpha=0.3)
    axes[0][0].legend(loc="best", fontsize=8)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    plt.close(fig)


def markdown(rows: list[dict], task: Task, title: str, exp_dir: Path) -> str:
    names = [m.name for m in task.metrics]
    head = ["train examples", "seed", "backend", "prompt", "eval examples"] + names + ["failed", "median latency (s)", "mean output tokens",
                                                           "train time (s)", "train tokens/s"]
    lines = [f"# {title}", "", f"Task `{task.name}`; each score is the mean over the eval examples "
             "(higher is better). `train examples = 0` is the untrained base model.", "",
             "![scaling](scaling.png)", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [r["num_train_examples"], r["seed"], r["backend"], r["prompt_variant"], r["n_eval"], *(r[n] for n in names), r["failed"],
                 r["median_latency_s"], r["mean_output_tokens"], r["train_wall_time_s"], r["train_tokens_per_s"]]
        lines.append("| " + " | ".join(_fmt(c, 1 if i >= len(cells) - 2 else 3) for i, c in enumerate(cells)) + " |")
    for latency in sorted(exp_dir.glob("*/latency/latency.md")):
        body = latency.read_text().split("\n", 1)[1]  # drop its title; it becomes a section here
        lines += ["", f"## Latency of `{latency.parent.parent.name}` ([latency.json]({latency.parent.parent.name}/latency/latency.json))", body.rstrip()]
    lines += ["", "Metrics: " + "; ".join(f"`{m.name}`: {m.description}" for m in task.metrics) + ".",
              "", "Every number is recomputable from the `generations.jsonl` and `train_metrics.json` files of "
              "the run directories listed in `results.json`.", ""]
    return "\n".join(lines)


def write_report(exp_dir: Path, task: Task) -> Path:
    exp_dir = Path(exp_dir)
    rows = collect(exp_dir)
    if not rows:
        raise FileNotFoundError(f"{exp_dir}: no evaluated cells to report")
    plot(rows, task, exp_dir / "scaling.png")
    write_json(exp_dir / "results.json", rows)
    return write_text(exp_dir / "summary.md", markdown(rows, task, f"{exp_dir.name}: scaling summary", exp_dir))

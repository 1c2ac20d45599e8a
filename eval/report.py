"""The experiment summary: a Markdown table and a PNG scaling plot, built from run directories only."""

from __future__ import annotations

from pathlib import Path

import yaml
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from pydantic import BaseModel, ConfigDict

from ftscale.atomic import atomic_path, write_json, write_text
from ftscale.cellrunner import audit_cell
from ftscale.config import CostSpec, load_validated
from ftscale.data.distill import training_source
from ftscale.errors import FtscaleError
from ftscale.experiment import expected_for_dir
from ftscale.prices import age, load_prices

from .cost import add_costs
from .pairwise_runs import describe, pooled, rate_text, read_comparisons
from .parity import parity_lines
from .qlora_report import qlora_lines
from .report_document import fmt
from .result_row import ResultRow, probe_metrics, result_rows
from .stats import ALPHA, align, holm, item_scores, mean_interval, p_text, paired_difference
from .tasks import Task


def audit(exp_dir: Path, expected: dict[Path, str] | None = None) -> tuple[list[ResultRow], list[tuple[Path, str]]]:
    """The rows of every shown evaluation of an experiment directory, and the folders not shown with
    the reason (failed, unfinished, stale). `expected`: the inputs digests the config asks for now
    (experiment.expected_inputs); without it, staleness is judged by the records alone."""
    rows, hidden = [], []
    for cell in sorted(p for p in Path(exp_dir).iterdir() if (p / "config.yaml").is_file()):
        shown, not_shown = audit_cell(cell, expected)
        rows += result_rows(cell, shown)
        hidden += not_shown
    rows.sort(key=lambda r: (r.system, r.prompt_variant, r.num_train_examples, r.seed, r.temperature))
    return rows, hidden


def not_shown_lines(hidden: list[tuple[Path, str]], exp_dir: Path) -> list[str]:
    """The evaluations on disk that are not results, and why: a reader sees what is missing."""
    if not hidden:
        return []
    lines = ["", "## Not shown", "", "These evaluations (or trainings) are on disk but are not results: they failed, "
             "diverged, did not finish, or were made from other inputs than the current config's. Running the "
             "experiment again redoes them (a diverged training: after the change its line suggests).", ""]
    lines += [f"- `{folder.relative_to(exp_dir) if folder.is_relative_to(exp_dir) else folder}`: {reason}"
              for folder, reason in hidden]
    return lines


def plot(rows: list[ResultRow], task: Task, path: Path) -> None:
    # the probes (general ability) beside the task's headline: forgetting shows as a falling curve
    metrics = tuple(task.headline or (m.name for m in task.metrics)) + tuple(probe_metrics(rows))
    directions = {m.name: m.higher_is_better for m in task.metrics} | {m: True for m in probe_metrics(rows)}
    fig = Figure(figsize=(4.6 * len(metrics), 3.6))
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, len(metrics), squeeze=False)
    sizes = sorted({r.num_train_examples for r in rows})
    positive = [s for s in sizes if s > 0]
    several_t = len({r.temperature for r in rows}) > 1
    for ax, metric in zip(axes[0], metrics):
        for backend, variant, t in sorted({(r.system, r.prompt_variant, r.temperature) for r in rows}):
            pts = sorted((r.num_train_examples, r.metric(metric)) for r in rows
                         if (r.system, r.prompt_variant, r.temperature) == (backend, variant, t)
                         and r.metric(metric) is not None)
            if not pts:
                continue
            at = f", t={t:g}" if several_t else ""
            if {p[0] for p in pts} == {0}:  # a base-only baseline: a reference line, not a curve
                ax.axhline(pts[0][1], linestyle=(0, (4, 2 + 2 * t)), color=str(0.35 + 0.3 * min(t, 1.0) / 1.0),
                           label=f"base, {variant} prompt ({backend}{at})")
            else:
                ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=f"{backend}, prompt: {variant}{at}")
        # symlog keeps n=0 (the untrained base) on a log-like axis of training sizes
        ax.set_xscale("symlog", linthresh=min(positive) if positive else 1)
        ax.set_xticks(sizes, [str(s) for s in sizes])
        values = [r.metric(metric) for r in rows if r.metric(metric) is not None]
        if values and 0 <= min(values) and max(values) <= 1:  # a rate; a diagnostic such as length keeps its own scale
            ax.set_ylim(-0.03, 1.03)
        if not values:  # say why the panel is empty rather than draw a blank one
            ax.text(0.5, 0.5, "no value in any evaluation\n(not scorable: see the summary)", ha="center", va="center",
                    transform=ax.transAxes, color="grey")
        ax.set_xlabel("training examples (0 = base model)")
        ax.set_ylabel(f"{metric} ({'higher' if directions[metric] else 'lower'} is better)")
        ax.set_title(metric.replace("_", " "))
        ax.grid(alpha=0.3)
    axes[0][0].legend(loc="best", fontsize=8)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120)


def plot_cost(rows: list[ResultRow], task: Task, path: Path, ctx: dict) -> bool:
    """Quality against cost per 1,000 requests, one point per system and training size."""
    metric = (task.headline or tuple(m.name for m in task.metrics))[0]
    points = [r for r in rows if r.cost_per_1k_requests_usd and r.metric(metric) is not None]
    if not points:
        return False
    fig = Figure(figsize=(6.4, 4.2))
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    for system, variant in sorted({(r.system, r.prompt_variant) for r in points}):
        pts = [r for r in points if (r.system, r.prompt_variant) == (system, variant)]
        ax.scatter([r.cost_per_1k_requests_usd for r in pts], [r.metric(metric) for r in pts],
                   label=f"{system}, {variant}")
        for r in pts:
            ax.annotate(f"n={r.num_train_examples}", (r.cost_per_1k_requests_usd, r.metric(metric)), fontsize=7,
                        xytext=(3, 3), textcoords="offset points")
    if ctx["reference_cost_per_1k_requests_usd"]:
        ax.axvline(ctx["reference_cost_per_1k_requests_usd"], linestyle="--", color="grey",
                   label=f"prompting {ctx['reference_model']} ({ctx['reference_variant']})")
    ax.set_xscale("log")
    ax.set_xlabel(f"cost per 1,000 requests (USD, log scale; prices {age(ctx['prices_checked'], dated=False)})")
    ax.set_ylabel(metric)
    ax.set_ylim(-0.03, 1.03)
    ax.set_title(f"{metric.replace('_', ' ')} against serving cost")
    ax.grid(alpha=0.3)
    ax.legend(loc="best", fontsize=8)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    return True


def usd(v) -> str:
    if v is None:
        return "–"
    if isinstance(v, str):
        return v
    return f"{v:.4f}" if v < 1 else f"{v:,.2f}"


def cost_lines(rows: list[ResultRow], task: Task, ctx: dict, has_plot: bool) -> list[str]:
    metrics = task.headline or tuple(m.name for m in task.metrics)
    ref = ctx["reference_cost_per_1k_requests_usd"]
    lines = ["", "## Cost next to quality", "",
             f"{ctx['prices_note']} Currency: {ctx['currency']}. Reference: "
             f"prompting `{ctx['reference_model']}` with the `{ctx['reference_variant']}` prompt, "
             f"${usd(ref)} per 1,000 requests ({ctx['reference_basis']}). Break-even: the number of requests after "
             "which training plus serving the system costs less than prompting the reference.", ""]
    if has_plot:
        lines += ["![cost](cost.png)", ""]
    head = ["train examples", "seed", "backend", "prompt", *metrics, "training cost ($)", "per 1,000 requests ($)",
            "break-even (requests)", "priced as"]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        be = r.break_even_requests
        cells = [r.num_train_examples, r.seed, r.system, r.prompt_variant,
                 *(fmt(r.metric(m)) for m in metrics), usd(r.training_cost_usd), usd(r.cost_per_1k_requests_usd),
                 "–" if be is None else (f"{be:,}" if isinstance(be, int) else be), r.cost_basis or "–"]
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    lines += ["", "Local systems are priced by the machine's price per hour times measured wall time: training, and "
              "the evaluation's wall time per request at the batch size or concurrency it ran with (see "
              "README, \"Reading cost next to quality\"). `–`: an input is missing (no price for the model, or a run "
              "evaluated before ftscale recorded evaluation wall time)."]
    return lines


def side_by_side(rows: list[ResultRow], task: Task) -> list[str]:
    """Headline metrics and probe accuracy per training size and temperature: where forgetting shows."""
    metrics = list(task.headline or (m.name for m in task.metrics))
    probes = probe_metrics(rows)
    head = ["train examples", "prompt", "temperature", *metrics, *probes]
    lines = ["", "## Side by side per training size and temperature", "",
             "The task's headline metrics next to the general-ability probes (`eval.probes`, asked as written at "
             "the same temperature): a fine-tune that gains the task but loses probe accuracy has forgotten. "
             "Means over the eval examples and over the probes.", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in sorted(rows, key=lambda r: (r.system, r.num_train_examples, r.prompt_variant, r.temperature, r.seed)):
        cells = [r.num_train_examples, r.prompt_variant + ("" if r.system == "hf" else f" ({r.system})"),
                 f"{r.temperature:g}", *(fmt(r.metric(m)) for m in metrics), *(fmt(r.metric(p)) for p in probes)]
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    return lines


def pairwise_lines(found: list[dict], stale: list[str]) -> list[str]:
    """The double-blind pairwise judgements (eval/pairwise_runs.read_comparisons) of the experiment."""
    lines = ["", f"Stale pairwise judgements left out (a side was evaluated again since; `ftscale run` judges them "
             f"again): {', '.join(stale)}."] if stale else []
    if not found:
        return lines
    head = ["system", "against", "temperature", "pairs judged", "win [95% CI]", "tie [95% CI]", "loss [95% CI]",
            "unparsable", "failed"]
    lines = ["", "## Double-blind pairwise judgements", *lines, "", describe(found), "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in pooled(found):
        lines.append(f"| {r['x']} | {r['y']} | {r['temperature']:g} | {r['n']} | {rate_text(r, 'win')} | "
                     f"{rate_text(r, 'tie')} | {rate_text(r, 'loss')} | {r['unparsable']} | {r['failed']} |")
    return lines


def _with_interval(row: ResultRow, metric: str, cache: dict) -> str | None:
    """`mean [low, high]` of one evaluation's score; the mean alone when it has no per-example values. A
    probe column (`probes.<metric>`) reads the probes' generations."""
    value = row.metric(metric)
    values = list(item_scores(row.metric_generations(metric), metric.removeprefix("probes."), cache).values())
    if value is None or not values:
        return fmt(value)
    _, low, high = mean_interval(values)
    return f"{value:.3f} [{low:.3f}, {high:.3f}]"


def _baselines(r: ResultRow, rows: list[ResultRow], metric: str, higher: bool) -> list[tuple[str, list[ResultRow]]]:
    """What a fine-tune row is compared with: the untrained base with the same prompt, and the best-scoring
    other prompt of the base (same backend and temperature), each with all its seeds."""
    base = [b for b in rows if b.num_train_examples == 0 and b.system == r.system
            and b.temperature == r.temperature and b.metric(metric) is not None]
    by_variant: dict[str, list[ResultRow]] = {}
    for b in base:
        by_variant.setdefault(b.prompt_variant, []).append(b)
    out = [(f"base, {r.prompt_variant} prompt", by_variant.pop(r.prompt_variant))] \
        if r.prompt_variant in by_variant else []
    if by_variant:
        sign = 1 if higher else -1
        best = max(by_variant, key=lambda v: sign * sum(b.metric(metric) for b in by_variant[v]) / len(by_variant[v]))
        out.append((f"best prompted base, {best} prompt", by_variant[best]))
    return out


def against_base(rows: list[ResultRow], task: Task, cache: dict) -> list[str]:
    """Each fine-tune against the untrained base, item by item (eval.stats.paired_difference), Holm-adjusted
    across the training sizes of one backend, prompt, temperature, metric and baseline."""
    metrics = [m for m in task.metrics if m.name in (task.headline or (task.metrics[0].name,))]
    found = []
    for m in metrics:
        for r in rows:
            trained = r.num_train_examples > 0 and r.metric(m.name) is not None
            a = item_scores(r.generations, m.name, cache) if trained else {}
            for name, base in _baselines(r, rows, m.name, m.higher_is_better) if a else []:
                maps = [item_scores(b.generations, m.name, cache) for b in base]
                x, y, ids, dropped = align([a], [mp for mp in maps if mp])
                if ids:
                    found.append(((m.name, r.system, r.prompt_variant, r.temperature, name), r,
                                  paired_difference(x, y), dropped, m.higher_is_better))
    if not found:
        return []
    families: dict[tuple, list[int]] = {}
    for i, f in enumerate(found):
        families.setdefault(f[0], []).append(i)
    adjusted = {}
    for idx in families.values():
        adjusted |= dict(zip(idx, holm([found[i][2].p_value for i in idx])))
    head = ["train examples", "seed", "backend", "prompt", "temperature", "metric", "against", "difference [95% CI]",
            "Holm p", "items", "verdict"]
    lines = ["", "## Fine-tunes against the untrained base (paired)", "",
             "Each fine-tune minus the untrained base on the same eval examples: the difference of the means, its "
             "95% paired bootstrap interval (examples resampled; the base's seeds as a second level when it has "
             "several), and the two-sided p-value (McNemar's exact test for a 0/1 score with one seed a side), "
             "Holm-adjusted across the training sizes. Indistinguishable: the interval contains 0 or p >= 0.05. "
             "A failed request counts as 0; examples one side could not score are left out of both.", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for i, ((metric, backend, variant, t, name), r, d, dropped, higher) in enumerate(found):
        p = adjusted[i]
        verdict = ("indistinguishable" if d.contains_zero() or p >= ALPHA
                   else "better" if (d.diff > 0) == higher else "worse")
        lines.append(f"| {r.num_train_examples} | {r.seed} | {backend} | {variant} | {t:g} | {metric} | {name} | "
                     f"{d.text()} | {p_text(p)} | {d.n_items}" + (f" ({dropped} unshared left out)" if dropped else "")
                     + f" | {verdict} |")
    return lines


def markdown(rows: list[ResultRow], task: Task, title: str, exp_dir: Path, cost_ctx: dict | None = None,
             has_cost_plot: bool = False, pairwise: tuple[list[dict], list[str]] = ([], []),
             train_source: str | None = None) -> str:
    names = [m.name for m in task.metrics]
    probes = probe_metrics(rows)
    several_t = len({r.temperature for r in rows}) > 1
    head = (["train examples", "seed", "backend", "prompt"] + (["temperature"] if several_t else []) + ["eval examples"]
            + names + probes
            + ["failed", "median latency (s)", "mean output tokens", "train time (s)", "train tokens/s"])
    lower = [m.name for m in task.metrics if not m.higher_is_better]
    lines = [f"# {title}", "", f"Task `{task.name}`; each score is the mean over the eval examples with its "
             "95% interval where the per-example scores are at hand (Wilson for a 0/1 score, a bootstrap over the "
             "examples otherwise) "
             f"(higher is better{'; lower is better for ' + ', '.join(lower) if lower else ''}). "
             "`train examples = 0` is the untrained base model."
             + (f" Prices {age(cost_ctx['prices_checked'])}." if cost_ctx else ""), "",
             *([train_source, ""] if train_source else []),
             "![scaling](scaling.png)", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    scores: dict = {}
    for r in rows:
        e2e = r.latency.e2e_s if r.latency else None
        cells = [r.num_train_examples, r.seed, r.system, r.prompt_variant,
                 *([f"{r.temperature:g}"] if several_t else []), r.n_eval,
                 *(_with_interval(r, n, scores) for n in names),
                 *(_with_interval(r, p, scores) for p in probes), r.failed,
                 e2e.p50 if e2e else None, r.mean_output_tokens, r.train_wall_time_s, r.train_tokens_per_s]
        lines.append("| " + " | ".join(fmt(c, ".1f" if i >= len(cells) - 2 else ".3f") for i, c in enumerate(cells))
                     + " |")
    unscorable = [r for r in rows if r.not_scorable]
    if unscorable:
        lines += ["", "Not scorable (left out of that metric's mean: the reference lacks a field the metric needs, "
                  "or a judge's reply did not parse): " + "; ".join(
                      f"n={r.num_train_examples} {r.system} {r.prompt_variant}"
                      + (f" t={r.temperature:g}" if several_t else "") + ": "
                      + ", ".join(f"{k} {v}" for k, v in r.not_scorable.items()) for r in unscorable) + "."]
    lines += against_base(rows, task, scores)
    headline = (task.headline or (task.metrics[0].name,))[0]
    lines += qlora_lines(rows, headline, scores) + parity_lines(rows, headline, scores)
    if probes or several_t:
        lines += side_by_side(rows, task)
    lines += pairwise_lines(*pairwise)
    if cost_ctx:
        lines += cost_lines(rows, task, cost_ctx, has_cost_plot)
    for latency in sorted(exp_dir.glob("*/latency/latency.md")):
        body = latency.read_text().split("\n", 1)[1]  # drop its title; it becomes a section here
        lines += ["", f"## Latency of `{latency.parent.parent.name}` ([latency.json]({latency.parent.parent.name}/latency/latency.json))", body.rstrip()]
    lines += ["", "Metrics: " + "; ".join(f"`{m.name}`: {m.description}" for m in task.metrics)
              + "".join(f"; `{p}`: the probes' {p.removeprefix('probes.')} (general ability)" for p in probes) + ".",
              "", "Every number is recomputable from the `generations.jsonl`, `timing.json` and `train_metrics.json` "
              "files of the run directories listed in `results.json`.", ""]
    return "\n".join(lines)


def cost_spec_of(exp_dir: Path, overrides: dict | None = None) -> CostSpec:
    """The experiment's `cost` section (defaults where it has none), with overrides on top."""
    path = Path(exp_dir) / "experiment.yaml"
    if not path.is_file():
        return CostSpec.model_validate(overrides or {})
    full = load_validated(path, _CostOnly, {f"cost.{k}": v for k, v in (overrides or {}).items()})
    return full.cost


class _CostOnly(BaseModel):
    """An experiment.yaml read for its cost section only (the rest is not this reader's business)."""

    model_config = ConfigDict(extra="ignore")
    cost: CostSpec = CostSpec()


def _train_source(exp_dir: Path) -> str | None:
    """The teacher of the experiment's training file, where `ftscale distill` recorded one."""
    path = exp_dir / "experiment.yaml"
    train = (yaml.safe_load(path.read_text()).get("data") or {}).get("train") if path.is_file() else None
    return training_source(train) if isinstance(train, str) else None


def write_report(exp_dir: Path, task: Task, cost: CostSpec | None = None, rows: list[ResultRow] | None = None,
                 hidden: list[tuple[Path, str]] | None = None) -> Path:
    """summary.md, results.json, scaling.png and cost.png of an experiment; `rows` and `hidden`: its
    `audit()`, when the caller has it already."""
    exp_dir = Path(exp_dir)
    if rows is None:
        rows, hidden = audit(exp_dir, expected_for_dir(exp_dir))
    hidden = hidden or []
    if not rows:
        raise FtscaleError(f"{exp_dir}: nothing has been evaluated yet" + (
            f" ({len(hidden)} evaluation(s) failed or are stale: {hidden[0][0]}: {hidden[0][1]})" if hidden else "")
            + "; evaluate first: `ftscale run CONFIG` or `ftscale eval --config CONFIG [--adapter RUN]`")
    cost = cost or cost_spec_of(exp_dir)
    cost_ctx = add_costs(rows, load_prices(cost.prices), cost)
    plot(rows, task, exp_dir / "scaling.png")
    has_cost_plot = plot_cost(rows, task, exp_dir / "cost.png", cost_ctx)
    pairwise = read_comparisons(exp_dir)
    write_json(exp_dir / "results.json", {"cost": cost_ctx, "rows": [r.as_json() for r in rows],
                                          "pairwise": pairwise[0],
                                          "not_shown": [{"folder": str(f), "reason": r} for f, r in hidden]})
    text = markdown(rows, task, f"{exp_dir.name}: scaling summary", exp_dir, cost_ctx, has_cost_plot, pairwise,
                    _train_source(exp_dir))
    return write_text(exp_dir / "summary.md", text + "\n".join(not_shown_lines(hidden, exp_dir)) + "\n")

"""Double-blind pairwise judgements between the evaluations of an experiment.

A task with a `pairwise:` section (configs/tasks/tone-rude.yaml) has every fine-tuned evaluation
compared with every untrained one at the same temperature (the base with each prompt variant:
the short prompt the fine-tune saw, the long persona prompt; a prompted OpenAI model evaluated
into the experiment with `ftscale eval --backend openai`), query by query, by the
pairwise judge of eval/judges.py: anonymised replies, both orders asked, the first order drawn
from a recorded seed. Each comparison is one file, `<experiment>/pairwise/<x>__vs__<y>.json`,
holding every judgement, its win/tie/loss rates with 95% Wilson intervals, and the SHA-256 of
both generations files: a comparison is judged again only when either side was re-generated,
or the judge, the seed or the limit changed.
"""

from __future__ import annotations

import json
from pathlib import Path

from pydantic import Field

from ftscale.atomic import write_json
from ftscale.chatdata import sha256_file
from ftscale.data.personas import load_persona
from ftscale.modelspec import ModelSpec
from ftscale.rundir import read_json
from ftscale.strict import Strict

from .backends import make_judge_backend
from .judges import load_judge_prompt, pairwise_judge, rates_of, win_rates
from .result_row import ResultRow

PAIRWISE_DIR = "pairwise"


class PairwiseSpec(Strict):
    judge: ModelSpec = Field(description="hf:<model>, openai:<model> or openai:<model>@<base_url>")
    persona: str = Field("rude", description="a persona in configs/personas/ (or a path): its judge_rubric is the target tone")
    prompt: Path | None = Field(None, description="a pairwise judge prompt YAML (default configs/judges/pairwise.yaml)")
    limit: int | None = Field(None, ge=1, description="queries per comparison (the first N both sides answered)")
    seed: int = Field(0, description="draws which order of each pair is asked first; recorded")


def system_name(row: ResultRow, seed: bool = True) -> str:
    """What a comparison calls an evaluation: (in a sweep, its system,) its training size (and
    seed, unless `seed` is False: the name of the seed group), its prompt, and its backend."""
    n = row.num_train_examples
    if row.in_sweep:  # its system names the backend; the base and references are n = 0
        who = row.system + (f" n={n}" + (f" seed {row.seed}" if seed else "") if n else "")
        return f"{who} ({row.prompt_variant} prompt)"
    who = "base" if n == 0 else f"n={n}"
    return f"{who} ({row.prompt_variant} prompt{'' if row.system == 'hf' else ', ' + row.system})"


class _Digests(dict):
    """SHA-256 of generations files, each file read once per pass (a base is in many comparisons)."""

    def __missing__(self, path: str) -> str:
        self[path] = digest = sha256_file(path)
        return digest


def _slug(row: ResultRow) -> str:
    """The evaluation's folder and its cell's (unique within an experiment or a sweep)."""
    evaluation = Path(row.generations).parent
    return f"{evaluation.parent.name}-{evaluation.name}"


def comparisons(rows: list[ResultRow]) -> list[tuple[ResultRow, ResultRow]]:
    """(fine-tuned evaluation, untrained evaluation) pairs at the same temperature: each fine-tune
    against its base and against every prompted model evaluated beside it (an OpenAI model with
    the persona prompt, say)."""
    return [(x, y) for x in rows if x.num_train_examples > 0
            for y in rows if y.num_train_examples == 0 and y.temperature == x.temperature]


def _pairs(x: ResultRow, y: ResultRow, limit: int | None) -> list[dict]:
    def answered(row):
        recs = [json.loads(line) for line in open(row.generations, encoding="utf-8")]
        return {r["id"]: r for r in recs if r["error"] is None}

    xs, ys = answered(x), answered(y)
    shared = [i for i in xs if i in ys][:limit]
    return [{"id": i, "query": next(m["content"] for m in reversed(xs[i]["prompt"]) if m["role"] == "user"),
             "system_x": system_name(x), "reply_x": xs[i]["output"],
             "system_y": system_name(y), "reply_y": ys[i]["output"]} for i in shared]


def run_comparisons(exp_dir: Path, spec: PairwiseSpec, rows: list[ResultRow], log=print) -> list[dict]:
    """Judge every comparison whose file is missing or stale; return every comparison's summary."""
    prompt = load_judge_prompt("pairwise", spec.prompt)
    rubric = load_persona(spec.persona).judge_rubric
    backend, out, digests = None, [], _Digests()
    for x, y in comparisons(rows):
        path = Path(exp_dir) / PAIRWISE_DIR / f"{_slug(x)}__vs__{_slug(y)}.json"
        key = {"judge": spec.judge, "persona": spec.persona, "seed": spec.seed, "limit": spec.limit,
               "prompt": prompt.model_dump(mode="json"),
               "sources": {"x": digests[x.generations], "y": digests[y.generations]}}
        done = read_json(path)
        if done is None or done.get("key") != key:
            pairs = _pairs(x, y, spec.limit)
            backend = backend or make_judge_backend(spec.judge)
            records = pairwise_judge(backend, prompt, rubric, pairs, spec.seed)
            rates = win_rates(records).get((system_name(x), system_name(y)))
            done = {"key": key, "x": system_name(x), "x_group": system_name(x, seed=False), "y": system_name(y),
                    "temperature": x.temperature,
                    "x_generations": x.generations, "y_generations": y.generations,
                    "rates": rates, "records": records}
            write_json(path, done)
            r = rates or {}
            log(f"pairwise {done['x']} vs {done['y']} at t={x.temperature:g}: {r.get('wins', 0)} wins, "
                f"{r.get('ties', 0)} ties, {r.get('losses', 0)} losses, {r.get('unparsable', 0)} unparsable")
        out.append(done)
    return out


def read_comparisons(exp_dir: Path) -> tuple[list[dict], list[str]]:
    """The comparisons on disk whose generations are still the ones judged (without their records),
    and the files of those that are stale (a side was evaluated again since)."""
    found, stale, digests = [], [], _Digests()
    for path in sorted((Path(exp_dir) / PAIRWISE_DIR).glob("*.json")):
        done = json.loads(path.read_text())
        current = all(Path(done[f"{side}_generations"]).is_file()
                      and digests[done[f"{side}_generations"]] == done["key"]["sources"][side] for side in ("x", "y"))
        if current:
            found.append({k: v for k, v in done.items() if k != "records"} | {"file": str(path)})
        else:
            stale.append(str(path))
    return found, stale


def pooled(found: list[dict]) -> list[dict]:
    """Win/tie/loss per (system, opponent, temperature), the seeds of a system pooled: counts summed
    over its comparisons, rates over the parsed pairs with 95% Wilson intervals."""
    groups: dict[tuple, dict] = {}
    for c in found:
        g = groups.setdefault((c.get("x_group", c["x"]), c["y"], c["temperature"]),
                              {"comparisons": 0, "wins": 0, "ties": 0, "losses": 0, "unparsable": 0, "failed": 0})
        g["comparisons"] += 1
        for k in ("wins", "ties", "losses", "unparsable", "failed"):
            g[k] += (c["rates"] or {}).get(k, 0)
    return [{"x": x, "y": y, "temperature": t, **rates_of(g)} for (x, y, t), g in groups.items()]


def rate_text(row: dict, which: str) -> str:
    """`0.40 [0.22, 0.61]`: a pooled rate with its 95% Wilson interval, `–` without parsed pairs."""
    if row[f"{which}_rate"] is None:
        return "–"
    lo, hi = row[f"{which}_ci"]
    return f"{row[f'{which}_rate']:.2f} [{lo:.2f}, {hi:.2f}]"


def describe(found: list[dict]) -> str:
    key = found[0]["key"]
    return (f"Judge `{key['judge']}`, persona `{key['persona']}`, order seed {key['seed']}: each query's two replies "
            "anonymised as A and B and asked in both orders; a system wins a query when it wins both orders or wins "
            "one and ties the other, a split counts as a tie. Rates over the parsed pairs (a system's seeds pooled), "
            "95% Wilson intervals. Every judgement is in `pairwise/`.")

"""`ftscale migrate plan`: the sweep that trains local replacements for a captured fine-tune.

    ftscale migrate plan migrations/acme --model smollm2-135m [--task TASK.yaml] [--margin 0.02]

Writes, next to the capture, `task.yaml` (the captured data; the task's evaluators, or without a
task the agreement evaluators, which hold the local model to the fine-tune's own answers),
`experiment.yaml`, `sweep.yaml` (local LoRA/QLoRA at nested training sizes and seeds; the captured
fine-tune as the reference system, replayed by the `captured` backend so the sweep runs even after
OpenAI switched it off) and `migration.json`, the marker that makes `ftscale report` write the
migration report: the non-inferiority margin, the headline metric and the monthly traffic.
"""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from .atomic import write_json, write_text
from .chatdata import json_lines
from .errors import FtscaleError
from .migrate import CAPTURED, MANIFEST

MARKER = "migration.json"


def default_sizes(n_train: int) -> list[int]:
    """0 (the untrained model), then halvings of the whole training set down to 8 examples."""
    return sorted({0, *(n_train // 2**k for k in range(6) if n_train // 2**k >= 8)})


def _answers_are_json(folder: Path) -> bool:
    from ftscale.eval.json_output import first_json_object

    outputs = [rec["output"] for _, rec in json_lines(folder / CAPTURED)]
    return bool(outputs) and sum(first_json_object(o) is not None for o in outputs) * 2 > len(outputs)


def agreement_evaluators(json_answers: bool, judge: str | None) -> tuple[list[dict], str]:
    """The agreement evaluators and the headline metric."""
    evaluators = [{"type": "agreement_exact", "name": "agree_exact"}]
    if json_answers:
        evaluators.append({"type": "agreement_json", "name": "agree_json"})
    if judge:
        evaluators += [{"type": "agreement_judge", "name": f"agree_judge_{o}", "judge": judge, "order": o}
                       for o in ("local_first", "captured_first")]
    return evaluators, ("agree_json.all" if json_answers else "agree_exact")


def task_spec(folder: Path, manifest: dict, task: str | None, judge: str | None) -> tuple[dict, str]:
    """The migration's task YAML (as a dict) and its headline metric."""
    sampling = {"temperature": manifest["sampling"]["temperature"],
                "max_new_tokens": manifest["sampling"]["max_new_tokens"]}
    agreement, headline = agreement_evaluators(_answers_are_json(folder), judge)
    data = {"train": str(folder / "train.jsonl"), "eval": str(folder / "eval.jsonl")}
    if task is None:
        return {"name": f"migration-{folder.name}", "description": f"agreement with {manifest['model']}",
                "data": data, "prompt_variants": {"default": {}}, "sampling": sampling,
                "headline": [headline], "evaluators": agreement}, headline
    from ftscale.eval.tasks.yaml_task import find_task_file, load_spec

    path = find_task_file(task)
    if path is None:
        raise FtscaleError(f"--task {task}: no task YAML by that name or path")
    spec = load_spec(path).model_dump(mode="json", exclude_none=True, exclude={"pairwise"})
    spec.update(name=f"migration-{folder.name}", data=data, prompt_variants={"default": {}})
    spec["evaluators"] = spec["evaluators"] + agreement
    from ftscale.eval.tasks import get_task

    first = spec.get("headline") or [get_task(str(path)).metrics[0].name]
    spec["headline"] = [first[0], headline]
    return spec, first[0]


def _parse_ints(text: str | None, what: str) -> list[int] | None:
    if text is None:
        return None
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise FtscaleError(f"--{what} {text}: expected comma-separated integers") from None


def _overrides(pairs: list[str]) -> dict:
    out = {}
    for p in pairs:
        key, eq, value = p.partition("=")
        if not eq or not key:
            raise FtscaleError(f"--set {p}: expected KEY=VALUE (train.epochs=1)")
        out[key] = yaml.safe_load(value)
    return out


def scorable_items(folder: Path, manifest: dict, headline: str) -> int:
    """How many captured items the headline metric can score: agree_json(.all) only those whose captured
    answer holds a JSON object; anything else every answered item (at most: a task's metric may leave some out)."""
    if not headline.startswith("agree_json"):
        return manifest["answered"]
    from ftscale.eval.json_output import first_json_object

    return sum(first_json_object(rec["output"]) is not None for _, rec in json_lines(folder / CAPTURED))


def evidence(n_items: int, margin: float, seeds: int) -> dict:
    """What the eval set can show before anything is trained: the smallest margin perfect agreement on these
    items shows, and the items the chosen margin needs (eval/noninferiority.py)."""
    from ftscale.eval.noninferiority import items_needed, smallest_margin

    showable, needed = smallest_margin(n_items, seeds), items_needed(margin, seeds)
    graded = " (several seeds: the graded test)" if seeds > 1 else ""
    line = (f"the eval set has {n_items} scorable items: even if a local model agreed with the fine-tune on every one, "
            f"it could show a margin of {showable:.3f} at best{graded}; a margin of {margin} needs "
            f"{needed if needed else 'more than 1,000,000'} items")
    if showable >= margin:
        line += (f". It CANNOT show the margin {margin}: no verdict can be YES. Capture more prompts (`ftscale migrate "
                 f"capture --from stored` takes the product's real traffic; --eval-size), or choose --margin "
                 f"{showable:.3f} or more")
    return {"n_items": n_items, "showable_margin": showable, "items_needed": needed, "can_show": showable < margin,
            "line": line}


def _sweep(folder: Path, manifest: dict, models: list[str], chosen: list[int], seeds: list[int], qlora: bool,
           keys: dict, reference: str, temperature: float) -> dict:
    epochs = keys.pop("train.epochs", 2)  # a sweep sets each cell's epochs itself
    # the local systems are evaluated through vLLM, as `ftscale migrate serve` will serve them, so that the
    # answers the verdict scores are the answers the product will get
    return {"name": folder.name, "base": str(folder / "experiment.yaml"), "overrides": keys,
            "systems": [{"name": f"{m} {'QLoRA' if qlora else 'LoRA'}", "backend": "local", "model": m,
                         "quantization": "4bit" if qlora else "none"} for m in models],
            "references": [{"name": reference, "backend": "captured", "model": manifest["model"],
                            "prompt_variant": "default", "captured": str(folder / CAPTURED)}],
            "num_train_examples": chosen, "seeds": seeds, "epochs": [epochs], "temperatures": [temperature],
            "prompt_variants": ["default"], "eval_backend": "vllm", "output_dir": str(folder.parent)}


def plan(folder: str | Path, models: list[str], *, task: str | None = None, sizes: str | None = None,
         seeds: str = "42", margin: float = 0.02, monthly_requests: int = 100_000, judge: str | None = None,
         overrides: list[str] = (), qlora: bool = False) -> str:
    """Write the migration's task, experiment, sweep and marker; return what the eval set can show and the
    command that runs it."""
    folder = Path(folder)
    if not (folder / MANIFEST).is_file() or not (folder / CAPTURED).is_file():
        raise FtscaleError(f"{folder}: no capture here (capture.json, captured.jsonl): run `ftscale migrate capture` first")
    manifest = json.loads((folder / MANIFEST).read_text())
    if manifest["answered"] == 0:
        raise FtscaleError(f"{folder}: the capture holds no answers of {manifest['model']}; run the capture again")
    if not 0 < margin < 1:
        raise FtscaleError(f"--margin {margin}: expected a number between 0 and 1 (a share of the metric's scale)")
    n_train = sum(1 for _ in json_lines(folder / "train.jsonl"))
    chosen = _parse_ints(sizes, "sizes") or default_sizes(n_train)
    if max(chosen) > n_train:
        raise FtscaleError(f"--sizes: {max(chosen)} is more than the {n_train} captured training examples")
    seed_list = _parse_ints(seeds, "seeds")
    spec, headline = task_spec(folder, manifest, task, judge)
    shows = evidence(scorable_items(folder, manifest, headline), margin, len(seed_list))
    write_text(folder / "task.yaml", yaml.safe_dump(spec, sort_keys=False))
    experiment = {"name": f"migration-{folder.name}", "task": str(folder / "task.yaml"), "model": models[0],
                  "num_train_examples": chosen, "train": {"seed": 42, "epochs": 2, "learning_rate": 2.0e-4,
                                                          "batch_size": 8},
                  "eval": {"prompt_variants": ["default"], "batch_size": 16}, "output_dir": str(folder / "runs")}
    write_text(folder / "experiment.yaml", yaml.safe_dump(experiment, sort_keys=False))
    reference = f"{manifest['model']} (captured)"
    product_t = manifest.get("product_temperature", manifest["sampling"]["temperature"])
    local_t = 0.0 if product_t is None else product_t
    sweep = _sweep(folder, manifest, models, chosen, seed_list, qlora, _overrides(list(overrides)), reference, local_t)
    write_text(folder / "sweep.yaml", yaml.safe_dump(sweep, sort_keys=False))
    from .sweepconfig import load_sweep

    load_sweep(folder / "sweep.yaml")  # every name and key checked now, not when the sweep starts
    write_json(folder / MARKER, {"model": manifest["model"], "reference": reference, "headline": headline,
                                 "margin": margin, "monthly_requests": monthly_requests,
                                 "systems": [s["name"] for s in sweep["systems"]], "task": task,
                                 "product_temperature": product_t, "local_temperature": local_t,
                                 "evidence": {k: v for k, v in shows.items() if k != "line"},
                                 "notes": manifest["data"].get("notes", [])})
    return (f"wrote {folder / 'sweep.yaml'}: {len(models)} local model(s) x sizes {chosen} x seeds {sweep['seeds']} "
            f"against {reference} on {manifest['answered']} captured answers ({headline}, margin {margin}), "
            f"evaluated through vLLM as `ftscale migrate serve` will serve them\n"
            f"what it can show: {shows['line']}\n"
            f"run it with:\n  ftscale sweep {folder / 'sweep.yaml'} && ftscale report {folder}")

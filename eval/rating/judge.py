"""An LLM judge's verdicts on a study's pairs, in the study's A/B terms (`llm_judge.json`).

`ftscale rate <study> --judge <backend:model>` writes them with the pairwise judge of eval/judges.py
(both orders of every pair; every judgement kept in `llm_judge_records.jsonl`); the report compares
them with the human votes."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

from ftscale.atomic import write_json, write_jsonl
from ftscale.data.personas import load_persona
from ftscale.errors import FtscaleError
from ftscale.eval.backends import make_judge_backend, parse_spec
from ftscale.eval.judges import load_judge_prompt, pairwise_judge

from .study import load_study

JUDGE_FILE = "llm_judge.json"
JUDGE_RECORDS = "llm_judge_records.jsonl"


def load_judge_verdicts(study_dir: Path, study: dict) -> dict[str, str] | None:
    """{pair id: "A" | "B" | "tie"} from the study's `llm_judge.json`, checked; None when there is none."""
    path = study_dir / JUDGE_FILE
    if not path.is_file():
        return None
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise FtscaleError(f"{path}: not JSON ({e.msg})") from None
    if not isinstance(raw, dict):
        raise FtscaleError(f"{path}: expected an object {{pair_id: \"A\" | \"B\" | \"tie\"}}")
    ids = {p["id"] for p in study["pairs"]}
    judge = {}
    for pid, label in raw.items():
        if pid not in ids:
            raise FtscaleError(f"{path}: pair id {pid!r} is not in study {study['name']} (a judge file of another study?)")
        norm = {"a": "A", "b": "B", "tie": "tie"}.get(str(label).strip().lower()) if isinstance(label, str) else None
        if norm is None:
            raise FtscaleError(f"{path}: pair {pid}: verdict {label!r} is not one of A, B, tie")
        judge[pid] = norm
    return judge


def judge_study(study_dir: str | Path, judge: str, persona: str = "rude", seed: int = 0,
                prompt: str | Path | None = None) -> dict:
    """Ask the pairwise LLM judge about every pair of the study (both orders, eval/judges.py) and
    write its verdicts in the study's A/B terms to `llm_judge.json`, the judgements themselves to
    `llm_judge_records.jsonl`. Pairs whose judgement did not parse or failed are left out of the
    verdicts (counted in the returned summary), never guessed."""
    try:
        parse_spec(judge)
    except ValueError as e:
        raise FtscaleError(f"--judge {e}") from None
    study_dir = Path(study_dir)
    study = load_study(study_dir)
    rubric = load_persona(persona).judge_rubric  # bad input refused before the judge is loaded
    prompt_cfg = load_judge_prompt("pairwise", prompt)
    items = [{"id": p["id"], "query": p["query"], "system_x": "A", "reply_x": p["a"]["reply"],
              "system_y": "B", "reply_y": p["b"]["reply"]} for p in study["pairs"]]
    records = pairwise_judge(make_judge_backend(judge), prompt_cfg, rubric, items, seed)
    verdicts = {r["id"]: {"x": "A", "y": "B", "tie": "tie"}[r["outcome"]] for r in records
                if r["outcome"] in ("x", "y", "tie")}
    write_jsonl(study_dir / JUDGE_RECORDS, records)
    write_json(study_dir / JUDGE_FILE, verdicts)
    outcomes = Counter(r["outcome"] for r in records)
    return {"judge": judge, "pairs": len(records), "verdicts": len(verdicts),
            "unparsable": outcomes["unparsable"], "failed": outcomes["failed"], "file": str(study_dir / JUDGE_FILE)}

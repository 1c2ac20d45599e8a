"""Building a study (`study.json`: the pairs to rate, sides and order drawn with a seed) and loading it.

The seed is drawn from `secrets` unless the owner gives one, and it is kept in `study.json` only, which
the server never serves: a rater who runs the same draw on the same queries cannot tell which side
holds which system. The rating forms carry a random key of their own, not one derived from the pairs."""

from __future__ import annotations

import hashlib
import itertools
import json
import random
import re
import secrets
from pathlib import Path

import yaml

from ftscale.atomic import write_json
from ftscale.chatdata import json_lines
from ftscale.errors import FtscaleError

from .votes import VOTES_DB, count_votes, timestamp

STUDY_FILE = "study.json"

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")


def _message_text(content) -> str:
    """A chat message's text: a string, or the text parts of a list of content parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(p.get("text", "") for p in content if isinstance(p, dict) and p.get("type", "text") == "text")
    return ""


def load_replies_from_generations(path: str | Path) -> dict[str, tuple[str, str]]:
    """{query id: (query, reply)} from an ftscale `generations.jsonl`.

    The query is the last user message of the record's prompt; records with an error (a failed
    request) are left out, so that query is not rated for any system."""
    path = Path(path)
    if not path.is_file():
        raise FtscaleError(f"{path}: no such generations file")
    out: dict[str, tuple[str, str]] = {}
    for lineno, rec in json_lines(path):
        if "id" not in rec or "prompt" not in rec:
            raise FtscaleError(f"{path}:{lineno}: not a generation record (needs id, prompt, output)")
        if rec.get("error") is not None:
            continue
        qid = str(rec["id"])
        if qid in out:
            raise FtscaleError(f"{path}:{lineno}: id {qid!r} appears twice")
        users = [m for m in rec["prompt"] if isinstance(m, dict) and m.get("role") == "user"]
        if not users:
            raise FtscaleError(f"{path}:{lineno}: the prompt has no user message")
        output = rec.get("output")
        if not isinstance(output, str):
            raise FtscaleError(f"{path}:{lineno}: output is not text")
        out[qid] = (_message_text(users[-1]["content"]), output)
    return out


def _common_queries(name: str, replies: dict[str, dict[str, tuple[str, str]]]) -> list[str]:
    """The queries every system answered, in the first system's order, each with one text for all."""
    systems = list(replies)
    if len(systems) < 2:
        raise FtscaleError(f"study {name}: needs replies from at least two systems, got {len(systems)}")
    for s in systems:
        if not isinstance(s, str) or not s.strip():
            raise FtscaleError(f"study {name}: system names must be non-empty strings, got {s!r}")
    first = replies[systems[0]]
    common = [q for q in first if all(q in replies[s] for s in systems[1:])]
    if not common:
        raise FtscaleError(f"study {name}: no query was answered by all systems ({', '.join(systems)})")
    for q in common:
        texts = {s: replies[s][q][0] for s in systems}
        if len({t.strip() for t in texts.values()}) > 1:
            raise FtscaleError(f"study {name}: query {q!r} has different texts for different systems "
                               f"({', '.join(texts)}); a pair must show both replies to the same query")
    return common


def _draw_pairs(replies: dict[str, dict[str, tuple[str, str]]], common: list[str], seed: int,
                n_pairs_per_system_pair: int | None) -> list[dict]:
    """The study's pairs: queries sampled per pair of systems, A/B sides drawn, the pairs shuffled."""
    rng = random.Random(seed)
    drafts = []
    for x, y in itertools.combinations(list(replies), 2):
        queries = list(common)
        if n_pairs_per_system_pair is not None and n_pairs_per_system_pair < len(queries):
            chosen = set(rng.sample(queries, n_pairs_per_system_pair))
            queries = [q for q in queries if q in chosen]
        for q in queries:
            sides = [(x, replies[x][q][1]), (y, replies[y][q][1])]
            if rng.random() < 0.5:
                sides.reverse()
            drafts.append((q, replies[x][q][0], sides))
    rng.shuffle(drafts)
    width = max(4, len(str(len(drafts))))
    return [{"id": f"p{i:0{width}d}", "query_id": q, "query": text,
             "a": {"system": a[0], "reply": a[1]}, "b": {"system": b[0], "reply": b[1]}}
            for i, (q, text, (a, b)) in enumerate(drafts, 1)]


def task_of_generations(path: str | Path) -> str | None:
    """The task named by the config of the run an evaluation's `generations.jsonl` belongs to
    (`<cell>/eval-<variant>/generations.jsonl`, the cell's `config.yaml`), or None."""
    config = Path(path).resolve().parent.parent / "config.yaml"
    try:
        task = yaml.safe_load(config.read_text(encoding="utf-8")).get("task")
    except (OSError, yaml.YAMLError, AttributeError):
        return None
    return task if isinstance(task, str) else None


def task_wording(task: str | None) -> dict:
    """The rating page's words for `task` (a name in configs/tasks/ or a task file): its file's `rating:`
    key; the defaults for no task or one without a YAML file."""
    from ftscale.eval.tasks.yaml_task import RatingWording, find_task_file, load_spec

    path = find_task_file(task) if task else None
    return (load_spec(path).rating if path else RatingWording()).model_dump()


def build_study(name: str, replies: dict[str, dict[str, tuple[str, str]]], out_root: str | Path, seed: int | None = None,
                n_pairs_per_system_pair: int | None = None, task: str | None = None) -> Path:
    """Write `out_root/name/study.json` and return the study directory.

    `replies`: {system: {query id: (query text, reply text)}}. Every pair of systems (in the
    order of `replies`) is compared on the queries that all systems answered (in the first
    system's order); `n_pairs_per_system_pair` draws that many of them per pair of systems (all
    when None or larger). `random.Random(seed)` draws the queries, the A/B side of each pair and
    the order of the pairs, so the same inputs and seed give the same study; with no seed, a
    128-bit one from `secrets`, recorded in study.json only. `task` gives the page its words."""
    if not isinstance(name, str) or not _NAME_RE.match(name):
        raise FtscaleError(f"study name {name!r}: use letters, digits, '.', '_' and '-' (a folder name)")
    common = _common_queries(name, replies)
    if n_pairs_per_system_pair is not None and n_pairs_per_system_pair < 1:
        raise FtscaleError(f"study {name}: n_pairs_per_system_pair must be at least 1")

    study_dir = Path(out_root) / name
    wording = task_wording(task)  # a bad task file is refused before anything is written
    seed = secrets.randbits(128) if seed is None else seed
    existing = count_votes(study_dir / VOTES_DB)
    if existing:
        raise FtscaleError(f"{study_dir} already holds {existing} votes; rebuilding would mislabel them: "
                           f"choose another study name (or move {study_dir / VOTES_DB} away)")

    study = {
        "name": name,
        "created": timestamp(),
        "seed": seed,
        "form_key": secrets.token_hex(8),
        "task": task,
        "wording": wording,
        "systems": list(replies),
        "n_queries_common": len(common),
        "n_pairs_per_system_pair": n_pairs_per_system_pair,
        "pairs": _draw_pairs(replies, common, seed, n_pairs_per_system_pair),
    }
    write_json(study_dir / STUDY_FILE, study)
    return study_dir


def load_study(study_dir: str | Path) -> dict:
    """The study's `study.json`, checked; a clear error when there is none."""
    study_dir = Path(study_dir)
    path = study_dir / STUDY_FILE
    if not path.is_file():
        raise FtscaleError(f"{study_dir}: no rating study here (no {STUDY_FILE}); build one first: "
                           f"ftscale rate {study_dir.name} --build SYSTEM=path/to/generations.jsonl "
                           f"SYSTEM=path/to/generations.jsonl ...")
    try:
        study = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise FtscaleError(f"{path}: not JSON ({e.msg})") from None
    for key in ("name", "systems", "pairs"):
        if key not in study:
            raise FtscaleError(f"{path}: not a rating study (no {key!r})")
    ids = [p["id"] for p in study["pairs"]]
    if len(set(ids)) != len(ids):
        raise FtscaleError(f"{path}: pair ids are not unique")
    return study


def study_key(study: dict) -> str:
    """An opaque token for the study in the rating forms: it names no system (a study's name may),
    and a rebuilt study with the same name gets a different one, so a stale page's votes are refused.
    Random (`form_key`); a study built before it had one gets a hash of its pairs."""
    if study.get("form_key"):
        return study["form_key"]
    ident = json.dumps([study["name"], study.get("created"), study.get("seed"), [p["id"] for p in study["pairs"]],
                        [[p["a"]["system"], p["b"]["system"]] for p in study["pairs"]]])
    return hashlib.sha256(ident.encode()).hexdigest()[:16]

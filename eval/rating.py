"""Human double-blind rating study: raters compare two systems' replies to the same query.

A study lives in one directory (`runs/studies/<name>/`):

- `study.json`: the pairs to rate. Each pair holds one query and two replies from two different
  systems; which system is shown as "Reply A" and which as "Reply B" is drawn per pair with the
  recorded seed, and the pairs themselves are shuffled, so a rater can learn nothing from the
  position or the order.
- `votes.db` (SQLite): one row per (study, pair, rater) vote; the UNIQUE constraint keeps a
  rater's first vote on a pair and refuses any later one.
- `llm_judge.json` (optional): {"pair_id": "A" | "B" | "tie"}, an LLM judge's verdicts on the
  same pairs, in the same A/B terms, compared with the humans in the report. `ftscale rate
  <study> --judge <backend:model>` writes it with the pairwise judge of eval/judges.py (both
  orders of every pair; every judgement kept in `llm_judge_records.jsonl`).

The rating server (stdlib `http.server`, plain HTML forms, no JavaScript) never sends a system
name to a rater: the rating pages name only "Reply A" and "Reply B", the form carries an opaque
study key rather than the study's name (a name such as "ft-vs-gpt4" would give the game away),
and `study.json` is not served. Only `/report` unblinds, it shows aggregates only, and it needs
the owner key: a random one printed once to the owner's terminal when the server starts (or
the value of FTSCALE_RATING_OWNER_KEY), kept in memory only, never in the study folder; a rater
cannot read results while voting. The server remembers which pair it served to each rater, with
a random ticket in the form, and accepts one vote for exactly that pair: a forged, replayed or
out-of-turn vote is refused. Requests whose Host header is not the address the server is bound
to are refused, so a web page that rebinds its DNS name to 127.0.0.1 cannot vote or read.

Statistics (see `unblind`): per pair of systems, win / tie / loss rates over all votes and the
win rate over decided (non-tie) votes, each with a 95% Wilson score interval; agreement between
raters (percent agreement and Cohen's kappa per pair of raters over the pairs both rated); and,
when `llm_judge.json` exists, agreement and Cohen's kappa between the judge and the majority
human vote of each pair.
"""

from __future__ import annotations

import datetime as _dt
import errno
import hashlib
import hmac
import html
import ipaddress
import itertools
import json
import math
import random
import os
import re
import secrets
import sqlite3
import sys
import threading
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, quote, urlsplit

from ftscale.apikey import is_loopback
from ftscale.atomic import write_json
from ftscale.chatdata import json_lines
from ftscale.errors import FtscaleError

from .judges import wilson

STUDY_FILE = "study.json"
VOTES_DB = "votes.db"
JUDGE_FILE = "llm_judge.json"
JUDGE_RECORDS = "llm_judge_records.jsonl"
CHOICES = ("A", "B", "tie")
MAX_RATER_LEN = 100
MAX_BODY = 64 * 1024
OWNER_KEY_ENV = "FTSCALE_RATING_OWNER_KEY"

SCHEMA = """
CREATE TABLE IF NOT EXISTS votes (
    study TEXT NOT NULL,
    pair_id TEXT NOT NULL,
    rater TEXT NOT NULL,
    choice TEXT NOT NULL CHECK (choice IN ('A', 'B', 'tie')),
    created TEXT NOT NULL,
    UNIQUE (study, pair_id, rater)
)
"""

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")


# --------------------------------------------------------------------------------------------
# Building a study


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


def build_study(name: str, replies: dict[str, dict[str, tuple[str, str]]], out_root: str | Path, seed: int = 0,
                n_pairs_per_system_pair: int | None = None) -> Path:
    """Write `out_root/name/study.json` and return the study directory.

    `replies`: {system: {query id: (query text, reply text)}}. Every pair of systems (in the
    order of `replies`) is compared on the queries that all systems answered (in the first
    system's order); `n_pairs_per_system_pair` draws that many of them per pair of systems (all
    when None or larger). `random.Random(seed)` draws the queries, the A/B side of each pair and
    the order of the pairs, so the same inputs and seed give the same study."""
    if not isinstance(name, str) or not _NAME_RE.match(name):
        raise FtscaleError(f"study name {name!r}: use letters, digits, '.', '_' and '-' (a folder name)")
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
    if n_pairs_per_system_pair is not None and n_pairs_per_system_pair < 1:
        raise FtscaleError(f"study {name}: n_pairs_per_system_pair must be at least 1")

    study_dir = Path(out_root) / name
    existing = _count_votes(study_dir / VOTES_DB)
    if existing:
        raise FtscaleError(f"{study_dir} already holds {existing} votes; rebuilding would mislabel them: "
                           f"choose another study name (or move {study_dir / VOTES_DB} away)")

    rng = random.Random(seed)
    drafts = []
    for x, y in itertools.combinations(systems, 2):
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
    pairs = [{"id": f"p{i:0{width}d}", "query_id": q, "query": text,
              "a": {"system": a[0], "reply": a[1]}, "b": {"system": b[0], "reply": b[1]}}
             for i, (q, text, (a, b)) in enumerate(drafts, 1)]
    study = {
        "name": name,
        "created": _now(),
        "seed": seed,
        "systems": systems,
        "n_queries_common": len(common),
        "n_pairs_per_system_pair": n_pairs_per_system_pair,
        "pairs": pairs,
    }
    write_json(study_dir / STUDY_FILE, study)
    return study_dir


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def _count_votes(db: Path) -> int:
    if not db.is_file():
        return 0
    conn = sqlite3.connect(db, timeout=10)
    try:
        return conn.execute("SELECT COUNT(*) FROM votes").fetchone()[0]
    except sqlite3.OperationalError:
        return 0
    finally:
        conn.close()


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
    and a rebuilt study with the same name gets a different one, so a stale page's votes are refused."""
    ident = json.dumps([study["name"], study.get("created"), study.get("seed"), [p["id"] for p in study["pairs"]],
                        [[p["a"]["system"], p["b"]["system"]] for p in study["pairs"]]])
    return hashlib.sha256(ident.encode()).hexdigest()[:16]


# --------------------------------------------------------------------------------------------
# Statistics


def cohen_kappa(pairs_of_labels) -> float:
    """Cohen's kappa of two raters over the same items: (p_o - p_e) / (1 - p_e), with p_o the
    observed agreement and p_e = Σ_label p1(label)·p2(label) the agreement expected by chance.
    NaN when undefined (no items, or both raters always gave one and the same label)."""
    pairs = list(pairs_of_labels)
    n = len(pairs)
    if n == 0:
        return math.nan
    po = sum(a == b for a, b in pairs) / n
    c1 = Counter(a for a, _ in pairs)
    c2 = Counter(b for _, b in pairs)
    pe = sum(c1[label] * c2[label] for label in c1) / (n * n)
    if pe == 1:
        return math.nan
    return (po - pe) / (1 - pe)


def _num(x: float) -> float | None:
    return None if x is None or (isinstance(x, float) and math.isnan(x)) else x


def _rate(k: int, n: int) -> dict:
    lo, hi = wilson(k, n)
    return {"k": k, "n": n, "rate": (k / n) if n else None, "lo": lo if n else None, "hi": hi if n else None}


def _read_votes(study_dir: Path, study: dict) -> list[tuple[str, str, str]]:
    """(pair_id, rater, choice) of this study's votes on its pairs, in the order they were cast."""
    db = study_dir / VOTES_DB
    if not db.is_file():
        return []
    ids = {p["id"] for p in study["pairs"]}
    conn = sqlite3.connect(db, timeout=10)
    try:
        rows = conn.execute("SELECT pair_id, rater, choice FROM votes WHERE study = ? ORDER BY rowid",
                            (study["name"],)).fetchall()
    except sqlite3.OperationalError:
        rows = []
    finally:
        conn.close()
    return [r for r in rows if r[0] in ids]


def _load_judge(study_dir: Path, study: dict) -> dict[str, str] | None:
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
    from ftscale.atomic import write_jsonl
    from ftscale.data.personas import load_persona

    from .backends import make_judge_backend, parse_spec
    from .judges import load_judge_prompt, pairwise_judge

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


def _majority(labels: list[str]) -> str | None:
    """The most frequent label; None when the top count is shared (no majority)."""
    top = Counter(labels).most_common()
    if len(top) > 1 and top[0][1] == top[1][1]:
        return None
    return top[0][0]


def unblind(study_dir: str | Path) -> dict:
    """The study's results by system: the numbers `/report` shows.

    - `comparisons`: one per pair of systems [x, y] (the study's system order). Every vote counts
      once: `wins` (x preferred), `losses` (y preferred), `ties`; `win_rate`, `tie_rate` and
      `loss_rate` over all `votes`, `win_rate_decided` over the `decided` (non-tie) votes, each
      {"k", "n", "rate", "lo", "hi"} with the 95% Wilson interval (rate/lo/hi None when n = 0).
    - `agreement`: per pair of raters, over the pairs both rated, `percent_agreement` (0-100) and
      Cohen's `kappa` (None when undefined); overall, the pooled percent agreement over all those
      comparisons and `mean_kappa`, the mean of the defined pairwise kappas (Light's kappa).
    - `llm_judge` (None without llm_judge.json): the judge's verdict against the majority human
      vote of each pair rated by humans and by the judge (pairs whose top human choice is shared
      are left out and counted in `no_majority`): `percent_agreement`, `kappa`, `n`.
    """
    study_dir = Path(study_dir)
    study = load_study(study_dir)
    systems = study["systems"]
    pairs = {p["id"]: p for p in study["pairs"]}
    votes = _read_votes(study_dir, study)

    comparisons = []
    for x, y in itertools.combinations(systems, 2):
        in_pair = {pid for pid, p in pairs.items() if {p["a"]["system"], p["b"]["system"]} == {x, y}}
        wins = losses = ties = 0
        for pid, _, choice in votes:
            if pid not in in_pair:
                continue
            if choice == "tie":
                ties += 1
            elif pairs[pid]["a" if choice == "A" else "b"]["system"] == x:
                wins += 1
            else:
                losses += 1
        n = wins + losses + ties
        comparisons.append({
            "systems": [x, y], "pairs": len(in_pair), "votes": n, "wins": wins, "losses": losses, "ties": ties,
            "decided": wins + losses,
            "win_rate": _rate(wins, n), "tie_rate": _rate(ties, n), "loss_rate": _rate(losses, n),
            "win_rate_decided": _rate(wins, wins + losses),
        })

    by_rater: dict[str, dict[str, str]] = {}
    for pid, rater, choice in votes:
        by_rater.setdefault(rater, {})[pid] = choice
    rater_pairs = []
    pooled_agree = pooled_n = 0
    for r1, r2 in itertools.combinations(sorted(by_rater), 2):
        both = [pid for pid in pairs if pid in by_rater[r1] and pid in by_rater[r2]]
        if not both:
            continue
        labels = [(by_rater[r1][pid], by_rater[r2][pid]) for pid in both]
        agree = sum(a == b for a, b in labels)
        pooled_agree += agree
        pooled_n += len(labels)
        rater_pairs.append({"raters": [r1, r2], "n": len(labels), "percent_agreement": 100 * agree / len(labels),
                            "kappa": _num(cohen_kappa(labels))})
    kappas = [rp["kappa"] for rp in rater_pairs if rp["kappa"] is not None]
    agreement = {
        "rater_pairs": rater_pairs,
        "n": pooled_n,
        "percent_agreement": (100 * pooled_agree / pooled_n) if pooled_n else None,
        "mean_kappa": (sum(kappas) / len(kappas)) if kappas else None,
    }

    judge = _load_judge(study_dir, study)
    llm = None
    if judge is not None:
        human: dict[str, list[str]] = {}
        for pid, _, choice in votes:
            human.setdefault(pid, []).append(choice)
        labels, no_majority = [], 0
        for pid in pairs:
            if pid not in judge or pid not in human:
                continue
            m = _majority(human[pid])
            if m is None:
                no_majority += 1
            else:
                labels.append((m, judge[pid]))
        agree = sum(a == b for a, b in labels)
        llm = {"judged": len(judge), "n": len(labels), "no_majority": no_majority, "agree": agree,
               "percent_agreement": (100 * agree / len(labels)) if labels else None,
               "kappa": _num(cohen_kappa(labels))}

    return {
        "study": study["name"],
        "systems": systems,
        "n_pairs": len(pairs),
        "n_votes": len(votes),
        "raters": {r: len(v) for r, v in sorted(by_rater.items())},
        "comparisons": comparisons,
        "agreement": agreement,
        "llm_judge": llm,
    }


# --------------------------------------------------------------------------------------------
# The server

_STYLE = """
body { font-family: system-ui, sans-serif; max-width: 70rem; margin: 2rem auto; padding: 0 1rem; color: #222; }
.query, .reply { white-space: pre-wrap; border: 1px solid #ccc; border-radius: 6px; padding: .8rem; }
.query { background: #f6f6f6; }
.replies { display: grid; grid-template-columns: 1fr 1fr; gap: 1rem; }
.votes button { font-size: 1.1rem; padding: .5rem 1.5rem; margin-right: 1rem; }
table { border-collapse: collapse; } td, th { border: 1px solid #ccc; padding: .3rem .6rem; text-align: right; }
th:first-child, td:first-child { text-align: left; }
.error { color: #a00; }
"""


def _page(title: str, body: str) -> bytes:
    return (f"<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
            f"<title>{html.escape(title)}</title><style>{_STYLE}</style></head>\n"
            f"<body>\n{body}\n</body></html>\n").encode("utf-8")


def _e(s) -> str:
    return html.escape(str(s), quote=True)


def _pct(r: dict) -> str:
    if r["rate"] is None:
        return "–"
    return f"{100 * r['rate']:.1f}% [{100 * r['lo']:.1f}, {100 * r['hi']:.1f}]"


def _fmt(x, digits=3) -> str:
    return "n/a" if x is None else f"{x:.{digits}f}"


def render_report(result: dict) -> bytes:
    """The unblinding report of `unblind()`'s numbers, as an HTML page."""
    rows = []
    for c in result["comparisons"]:
        x, y = c["systems"]
        rows.append(
            f"<tr class=\"comparison\" data-x=\"{_e(x)}\" data-y=\"{_e(y)}\" data-votes=\"{c['votes']}\" "
            f"data-wins=\"{c['wins']}\" data-ties=\"{c['ties']}\" data-losses=\"{c['losses']}\">"
            f"<td>{_e(x)} vs {_e(y)}</td><td>{c['pairs']}</td><td class=\"votes\">{c['votes']}</td>"
            f"<td>{c['wins']} · {c['ties']} · {c['losses']}</td>"
            f"<td>{_pct(c['win_rate'])}</td><td>{_pct(c['tie_rate'])}</td><td>{_pct(c['loss_rate'])}</td>"
            f"<td>{_pct(c['win_rate_decided'])} <small>(n={c['decided']})</small></td></tr>")
    comp = ("<table id=\"comparisons\"><tr><th>x vs y</th><th>pairs</th><th>votes</th><th>x wins · ties · y wins</th>"
            "<th>x win rate [95% CI]</th><th>tie rate [95% CI]</th><th>x loss rate [95% CI]</th>"
            "<th>x win rate over decided votes [95% CI]</th></tr>" + "".join(rows) + "</table>")
    ag = result["agreement"]
    arows = "".join(
        f"<tr class=\"rater-pair\" data-raters=\"{_e(' | '.join(rp['raters']))}\" data-n=\"{rp['n']}\" "
        f"data-percent=\"{rp['percent_agreement']:.4f}\" data-kappa=\"{_fmt(rp['kappa'], 4)}\">"
        f"<td>{_e(rp['raters'][0])} · {_e(rp['raters'][1])}</td><td>{rp['n']}</td>"
        f"<td>{rp['percent_agreement']:.1f}%</td><td>{_fmt(rp['kappa'])}</td></tr>"
        for rp in ag["rater_pairs"])
    if ag["rater_pairs"]:
        agree = (f"<table id=\"agreement\"><tr><th>raters</th><th>pairs both rated</th><th>agreement</th>"
                 f"<th>Cohen's kappa</th></tr>{arows}</table>"
                 f"<p>Overall: {ag['percent_agreement']:.1f}% agreement over {ag['n']} comparisons; "
                 f"mean pairwise kappa {_fmt(ag['mean_kappa'])}.</p>")
    else:
        agree = "<p id=\"agreement\">No pair has been rated by two raters yet.</p>"
    j = result["llm_judge"]
    if j is None:
        judge = f"<p id=\"llm-judge\">No {JUDGE_FILE} in the study directory.</p>"
    else:
        pa = "n/a" if j["percent_agreement"] is None else f"{j['percent_agreement']:.1f}%"
        judge = (f"<p id=\"llm-judge\" data-n=\"{j['n']}\" data-agree=\"{j['agree']}\" "
                 f"data-kappa=\"{_fmt(j['kappa'], 4)}\">The LLM judge agrees with the majority human vote on "
                 f"{j['agree']} of {j['n']} pairs ({pa}); Cohen's kappa {_fmt(j['kappa'])}. "
                 f"{j['no_majority']} pairs without a human majority left out; the judge rated {j['judged']} pairs.</p>")
    raters = ", ".join(f"{_e(r)} ({k})" for r, k in result["raters"].items()) or "none yet"
    data = json.dumps(result, ensure_ascii=False).replace("<", "\\u003c")
    body = (f"<h1>Rating study {_e(result['study'])}: unblinded results</h1>"
            f"<p id=\"totals\">{result['n_votes']} votes on {result['n_pairs']} pairs. Raters: {raters}.</p>"
            f"<h2>Preferences by pair of systems</h2>{comp}"
            f"<p><small>Every vote counts once (votes of several raters on one pair are not independent, so the "
            f"intervals are somewhat narrow when pairs have many raters). Intervals: Wilson score, 95%.</small></p>"
            f"<h2>Agreement between raters</h2>{agree}"
            f"<h2>Humans and the LLM judge</h2>{judge}"
            f"<script type=\"application/json\" id=\"unblind-data\">{data}</script>")
    return _page(f"Report: {result['study']}", body)


class RatingServer(ThreadingHTTPServer):
    """Serves one study. `shutdown()` stops the background thread and closes the socket."""

    daemon_threads = True

    def __init__(self, study_dir: Path, study: dict, address: tuple[str, int], owner_key: str):
        self.study_dir = study_dir
        self.study = study
        self.key = study_key(study)
        self.owner_key = owner_key
        self.pair_ids = [p["id"] for p in study["pairs"]]
        self.pairs = {p["id"]: p for p in study["pairs"]}
        self.db_path = study_dir / VOTES_DB
        self.log_requests = False
        self._thread: threading.Thread | None = None
        self._served: dict[str, tuple[str, str]] = {}  # rater -> (pair id, ticket) of the pair on their page
        self._served_lock = threading.Lock()
        super().__init__(address, _Handler)  # bound before anything is written: a busy port changes nothing
        conn = sqlite3.connect(self.db_path, timeout=30)
        try:
            conn.execute(SCHEMA)
            conn.commit()
        finally:
            conn.close()

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host}:{port}/"

    def connect(self) -> sqlite3.Connection:
        return sqlite3.connect(self.db_path, timeout=30)

    def voted(self, rater: str) -> set[str]:
        """The ids of the pairs `rater` has voted on."""
        conn = self.connect()
        try:
            rows = conn.execute("SELECT pair_id FROM votes WHERE study = ? AND rater = ?",
                                (self.study["name"], rater)).fetchall()
        finally:
            conn.close()
        return {r[0] for r in rows}

    def serve_pair(self, rater: str, pair_id: str) -> str:
        """The ticket for the pair now on `rater`'s page (the same on a reload, so two tabs agree)."""
        with self._served_lock:
            pid, ticket = self._served.get(rater, (None, None))
            if pid != pair_id:
                ticket = secrets.token_urlsafe(16)
                self._served[rater] = (pair_id, ticket)
            return ticket

    def take_ticket(self, rater: str, pair_id: str, ticket: str) -> bool:
        """Whether this is the pair served to `rater` with this ticket; a ticket is good for one vote."""
        with self._served_lock:
            pid, expected = self._served.get(rater, (None, None))
            if pid != pair_id or expected is None or not hmac.compare_digest(expected, ticket):
                return False
            del self._served[rater]
            return True

    def host_allowed(self, host_header: str | None) -> bool:
        """The Host header names this server: its port, and its bound address (loopback names too when
        bound to loopback; any IP address when bound to all interfaces). A DNS name that merely resolves
        here (DNS rebinding) does not."""
        bound, port = self.server_address[:2]
        host, sep, got_port = (host_header or "").strip().lower().rpartition(":")
        if not sep or got_port != str(port) or not host:
            return False
        host = host.strip("[]")
        if host == bound.lower():
            return True
        wildcard = bound in ("0.0.0.0", "::")
        if is_loopback(bound) or wildcard:
            if host == "localhost" or is_loopback(host):
                return True
        if wildcard:
            try:
                ipaddress.ip_address(host)
                return True
            except ValueError:
                return False
        return False

    def shutdown(self) -> None:
        super().shutdown()
        self.server_close()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=10)


class _Handler(BaseHTTPRequestHandler):
    server: RatingServer
    server_version = "ftscale-rating"
    sys_version = ""

    def log_message(self, format, *args):  # noqa: A002 (the base class's name)
        if self.server.log_requests:  # the owner key in a /report URL stays out of the log
            super().log_message(format, *(re.sub(r"key=[^&\s]*", "key=***", a) if isinstance(a, str) else a
                                          for a in args))

    # ---- responses

    def _send(self, status: int, body: bytes, ctype: str = "text/html; charset=utf-8", headers: dict | None = None):
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("Referrer-Policy", "no-referrer")  # a report URL carries the owner key
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _error(self, status: int, message: str, rater: str | None = None):
        back = (f"<p><a id=\"continue\" href=\"/rate?rater={quote(rater)}\">Continue rating</a></p>"
                if rater else "<p><a href=\"/\">Start page</a></p>")
        self._send(status, _page("Error", f"<p class=\"error\" id=\"error\">{_e(message)}</p>{back}"))

    def _redirect(self, location: str):
        self._send(303, b"", headers={"Location": location})

    # ---- routes

    def _wrong_host(self) -> bool:
        if self.server.host_allowed(self.headers.get("Host")):
            return False
        self._error(421, "this server answers only to the address it was started on (Host header refused)")
        return True

    def do_GET(self):
        if self._wrong_host():
            return
        url = urlsplit(self.path)
        query = parse_qs(url.query, keep_blank_values=True)
        if url.path == "/":
            return self._index()
        if url.path == "/rate":
            rater = (query.get("rater") or [""])[0].strip()
            if not rater:
                return self._redirect("/")
            if len(rater) > MAX_RATER_LEN:
                return self._error(400, f"the rater name is longer than {MAX_RATER_LEN} characters")
            return self._rate(rater)
        if url.path == "/report":
            return self._report((query.get("key") or [""])[0])
        return self._error(404, f"no page {url.path}")

    do_HEAD = do_GET

    def do_POST(self):
        if self._wrong_host():
            return
        url = urlsplit(self.path)
        if url.path != "/vote":
            return self._error(404, f"no form posts to {url.path}")
        return self._vote()

    def _index(self):
        body = ("<h1>Which reply is better?</h1>"
                "<p>You will see a customer query and two replies, A and B, in random order. "
                "Choose the better reply, or a tie. Use the same name when you come back: you continue where you left off.</p>"
                "<form method=\"get\" action=\"/rate\">"
                "<label for=\"rater\">Your name</label> "
                "<input id=\"rater\" name=\"rater\" required maxlength=\"100\" autofocus> "
                "<button id=\"start\" type=\"submit\">Start</button></form>")
        self._send(200, _page("Rating", body))

    def _rate(self, rater: str):
        voted = self.server.voted(rater)
        ids = self.server.pair_ids
        todo = [pid for pid in ids if pid not in voted]
        n = len(ids)
        if not todo:
            body = (f"<div id=\"done\"><h1>Done — thank you, {_e(rater)}!</h1>"
                    f"<p>You have rated all {n} pairs. The study's owner will share the results.</p></div>")
            return self._send(200, _page("Done", body))
        pair = self.server.pairs[todo[0]]
        ticket = self.server.serve_pair(rater, pair["id"])
        k = n - len(todo) + 1
        body = (f"<p id=\"progress\">Pair {k} of {n} · rater {_e(rater)}</p>"
                f"<h2>Query</h2><div class=\"query\" id=\"query\">{_e(pair['query'])}</div>"
                f"<div class=\"replies\">"
                f"<div><h2>Reply A</h2><div class=\"reply\" id=\"reply-A\">{_e(pair['a']['reply'])}</div></div>"
                f"<div><h2>Reply B</h2><div class=\"reply\" id=\"reply-B\">{_e(pair['b']['reply'])}</div></div>"
                f"</div>"
                f"<form method=\"post\" action=\"/vote\" class=\"votes\" id=\"vote-form\">"
                f"<input type=\"hidden\" name=\"study\" value=\"{_e(self.server.key)}\">"
                f"<input type=\"hidden\" name=\"pair_id\" value=\"{_e(pair['id'])}\">"
                f"<input type=\"hidden\" name=\"ticket\" value=\"{_e(ticket)}\">"
                f"<input type=\"hidden\" name=\"rater\" value=\"{_e(rater)}\">"
                f"<p>Which reply is better?</p>"
                f"<button id=\"vote-A\" type=\"submit\" name=\"choice\" value=\"A\">Reply A</button>"
                f"<button id=\"vote-B\" type=\"submit\" name=\"choice\" value=\"B\">Reply B</button>"
                f"<button id=\"vote-tie\" type=\"submit\" name=\"choice\" value=\"tie\">Tie</button>"
                f"</form>")
        self._send(200, _page(f"Pair {k} of {n}", body))

    def _vote(self):
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            return self._error(400, "bad Content-Length")
        if length > MAX_BODY:
            return self._error(413, "request body too large")
        ctype = (self.headers.get("Content-Type") or "").split(";")[0].strip().lower()
        raw = self.rfile.read(length) if length > 0 else b""
        if ctype != "application/x-www-form-urlencoded":
            return self._error(400, "a vote is a form post (application/x-www-form-urlencoded) with fields "
                                    "study, pair_id, rater, choice")
        try:
            form = parse_qs(raw.decode("utf-8"), keep_blank_values=True, strict_parsing=False)
        except UnicodeDecodeError:
            return self._error(400, "the form is not UTF-8")
        fields = {}
        for name in ("study", "pair_id", "rater", "choice"):
            values = form.get(name, [])
            if len(values) != 1:
                return self._error(400, f"the vote needs exactly one field {name!r}" + (" (missing)" if not values else ""))
            fields[name] = values[0]
        rater = fields["rater"].strip()
        if not rater:
            return self._error(400, "the rater name is empty: start again from the first page and enter your name")
        if len(rater) > MAX_RATER_LEN:
            return self._error(400, f"the rater name is longer than {MAX_RATER_LEN} characters")
        if fields["study"] != self.server.key:
            return self._error(400, "this vote is for another study (or an older build of this one) than the one "
                                    "this server runs: reload the rating page", rater)
        pid = fields["pair_id"]
        if pid not in self.server.pairs:
            return self._error(400, f"unknown pair id {pid!r}: this study has no such pair; nothing was recorded", rater)
        choice = fields["choice"]
        if choice not in CHOICES:
            return self._error(400, f"choice {choice!r} is not one of A, B, tie; nothing was recorded", rater)
        tickets = form.get("ticket", [])
        if not self._served_vote(rater, pid, tickets[0] if len(tickets) == 1 else None):
            return
        conn = self.server.connect()
        try:
            with conn:
                conn.execute("INSERT INTO votes (study, pair_id, rater, choice, created) VALUES (?, ?, ?, ?, ?)",
                             (self.server.study["name"], pid, rater, choice, _now()))
        except sqlite3.IntegrityError:
            return self._error(409, f"{rater} has already voted on pair {pid}; the first vote is kept", rater)
        finally:
            conn.close()
        self._redirect(f"/rate?rater={quote(rater)}")

    def _served_vote(self, rater: str, pid: str, ticket: str | None) -> bool:
        """The vote is for the pair this server put on the rater's page, with its ticket, voted once."""
        if pid in self.server.voted(rater):
            self._error(409, f"{rater} has already voted on pair {pid}; the first vote is kept", rater)
            return False
        if ticket is None or not self.server.take_ticket(rater, pid, ticket):
            self._error(409, f"pair {pid} is not the pair on {rater}'s rating page: a vote counts only for the "
                             "pair shown; nothing was recorded", rater)
            return False
        return True

    def _report(self, key: str):
        auth = self.headers.get("Authorization") or ""
        given = key or auth.removeprefix("Bearer ").strip()
        if not given or not hmac.compare_digest(given.encode(), self.server.owner_key.encode()):
            return self._error(403, "the report is for the study's owner: open the report address printed when "
                                    "the server started (…/report?key=…)")
        try:
            result = unblind(self.server.study_dir)
        except FtscaleError as e:
            return self._error(500, str(e))
        self._send(200, render_report(result))


def _make_server(study_dir: str | Path, host: str, port: int, owner_key: str | None) -> RatingServer:
    study_dir = Path(study_dir)
    study = load_study(study_dir)
    try:
        return RatingServer(study_dir, study, (host, port), owner_key or secrets.token_urlsafe(24))
    except OSError as e:
        if e.errno == errno.EADDRINUSE:
            raise FtscaleError(f"port {port} on {host} is already in use: choose another with --port") from None
        raise FtscaleError(f"cannot serve on {host}:{port}: {e.strerror or e}") from None


def serve_study(study_dir: str | Path, host: str = "127.0.0.1", port: int = 0,
                owner_key: str | None = None) -> RatingServer:
    """Start serving the study in a background thread and return the server: `server_address`
    gives the port (0 picks a free one), `url` the address, `owner_key` the key `/report` needs
    (random unless given), `shutdown()` stops it."""
    server = _make_server(study_dir, host, port, owner_key)
    server._thread = threading.Thread(target=server.serve_forever, name="ftscale-rating", daemon=True)
    server._thread.start()
    return server


def run_rating_server(study_dir: str | Path, host: str = "127.0.0.1", port: int = 8765) -> None:
    """Serve the study until Ctrl-C (the command-line entry). The owner key is FTSCALE_RATING_OWNER_KEY's
    value, else a random one shown here once; either way it lives in this process only."""
    from_env = os.environ.get(OWNER_KEY_ENV)
    server = _make_server(study_dir, host, port, from_env)
    server.log_requests = True
    if not is_loopback(host):
        print(f"warning: serving on {host}: anyone who can reach it can vote (the report still needs the owner key)",
              file=sys.stderr)
    shown = f"${OWNER_KEY_ENV}" if from_env else server.owner_key
    print(f"rating study {server.study['name']} ({len(server.pair_ids)} pairs) for raters: {server.url}\n"
          f"for you only (the unblinded report): {server.url}report?key={shown}\n"
          f"(`ftscale rate <study> --report` prints the same numbers on this machine; Ctrl-C stops)", file=sys.stderr, flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        print("stopped; the votes are kept in " + str(server.db_path), file=sys.stderr)
    finally:
        server.server_close()

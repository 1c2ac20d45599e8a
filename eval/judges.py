"""LLM judges for the tone experiment: an absolute score per reply and double-blind pairwise comparisons.

The prompts live in YAML (`configs/judges/absolute.yaml`, `configs/judges/pairwise.yaml`); this
module fills them, asks a judge backend, and parses the replies strictly.

Parsing (the judge's reply is trusted only when it follows the format exactly):

- A label line is a line whose text, stripped, starts with the label and a colon, in any case
  (`Tone:`, `Addresses problem:`, `Winner:`). Other lines (a preamble, an explanation) are allowed
  and ignored: they cannot be mistaken for a verdict, and strong judges often add them.
- Each label must appear on exactly one line. Two `Tone:` lines, even if they agree, make the reply
  unparsable: the judge did not answer once.
- The value after the colon must be exactly the value and nothing else: `Tone: 7` (an integer
  1..10; `7/10`, `7.0`, `seven`, `7 (rude)` are not), `Addresses problem: yes|no`,
  `Winner: A|B|tie` (any case). Markdown around the label (`**Tone:** 7`) does not make a label
  line, so such a reply has no verdict.
- An unparsable reply is recorded as such (`parsed: False`, values None), never guessed.

Pairwise comparisons are double-blind: the judge sees "Reply A" and "Reply B", never the systems'
names, and every pair is asked in both orders (x shown as A, then y shown as A). Which order is
asked first is drawn from `random.Random(seed)` and recorded. The two verdicts, mapped back to the
systems, combine into one outcome per pair:

    x won both, or won one and tied the other  -> x
    y likewise                                 -> y
    split (each won once) or both ties         -> tie
    either verdict unparsable                  -> unparsable
    either request failed                      -> failed

A judge that always prefers position A splits every pair, so position bias turns into ties
instead of wins.
"""

from __future__ import annotations

import random
import re
import string
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import Field, PrivateAttr, ValidationInfo, field_validator, model_validator

from ftscale import paths
from ftscale.errors import ConfigError, FtscaleError
from ftscale.eval.backends import Backend, Request, Sampling
from ftscale.eval.stats import wilson
from ftscale.modelspec import ModelSpec
from ftscale.strict import Strict, load_validated

from .evaluator_types import KeyProblem

JUDGES_DIR = paths.CONFIGS / "judges"

PLACEHOLDERS = {
    "absolute": ("persona_rubric", "query", "reply"),
    "pairwise": ("persona_rubric", "query", "reply_a", "reply_b"),
}
# The labels the parsers read; the prompt must ask for them.
LABELS = {"absolute": ("Tone:", "Addresses problem:"), "pairwise": ("Winner:",)}
TONE_MIN, TONE_MAX = 1, 10


# --- the prompts ---------------------------------------------------------------------------------

class JudgePrompt(Strict):
    kind: Literal["absolute", "pairwise"]
    prompt: str = Field(description="the user message; placeholders per kind (see the file's header)")
    system: str | None = Field(None, description="the judge's system message; absent: none")
    max_new_tokens: int = Field(ge=1, le=4096, description="the judge's reply length")

    @field_validator("prompt")
    @classmethod
    def _placeholders(cls, v: str, info: ValidationInfo) -> str:
        kind = info.data.get("kind")
        if kind not in PLACEHOLDERS:
            return v  # the kind's own error is reported
        known = PLACEHOLDERS[kind]
        try:
            fields = [(name, spec, conv) for _, name, spec, conv in string.Formatter().parse(v) if name is not None]
        except ValueError as e:  # a lone brace
            raise ValueError(f"{e} (write literal braces as {{{{ and }}}})") from None
        shown = ", ".join("{" + k + "}" for k in known)
        for name, spec, conv in fields:
            if name not in known or spec or conv:
                written = name + (f"!{conv}" if conv else "") + (f":{spec}" if spec else "")
                raise ValueError(f"unknown placeholder {{{written}}}; a {kind} prompt knows {shown} "
                                 "(literal braces: {{ }})")
        missing = [k for k in known if k not in {name for name, _, _ in fields}]
        if missing:
            raise ValueError(f"the {kind} prompt must show " + ", ".join("{" + k + "}" for k in missing))
        absent = [label for label in LABELS[kind] if label.lower() not in v.lower()]
        if absent:
            raise ValueError(f"the {kind} prompt must ask for the reply format the parser reads: "
                             + ", ".join(repr(a) for a in absent) + " not found")
        return v

    def render(self, **values: str) -> list[dict]:
        messages = [{"role": "system", "content": self.system}] if self.system else []
        return messages + [{"role": "user", "content": self.prompt.format(**values)}]


class JudgeParams(Strict):
    """The knobs every judge-backed evaluator has: the judge, its prompt file (the subclass's
    PROMPT by default, of kind KIND) and its reply length (the prompt file's by default)."""
    KIND: ClassVar[Literal["absolute", "pairwise"]]
    PROMPT: ClassVar[Path]
    judge: ModelSpec = Field(description="hf:<model ref> (in-process) or openai:<model>[@<base_url>] (OpenAI, a vLLM server)")
    prompt: Path | None = Field(None, description="a judge prompt YAML of the evaluator's kind (default: its file in configs/judges/)")
    max_new_tokens: int | None = Field(None, ge=1, description="the judge's reply length (default: the prompt file's)")
    _prompt: Any = PrivateAttr(None)

    @model_validator(mode="after")
    def _load_prompt(self):
        try:
            self._prompt = load_judge_prompt(self.KIND, self.prompt or self.PROMPT)
        except (FtscaleError, FileNotFoundError) as e:
            raise KeyProblem("prompt", str(e)) from None
        if self.max_new_tokens is None:
            self.max_new_tokens = self._prompt.max_new_tokens
        return self


def load_judge_prompt(kind: Literal["absolute", "pairwise"], path: str | Path | None = None) -> JudgePrompt:
    """The judge prompt of `kind` from `path` (default `configs/judges/<kind>.yaml`), validated:
    unknown keys, missing or unknown placeholders and a prompt that does not ask for the parsed
    format are refused as `file:line: key: reason`."""
    if kind not in PLACEHOLDERS:
        raise ValueError(f"judge kind {kind!r}: expected absolute or pairwise")
    path = Path(path) if path is not None else JUDGES_DIR / f"{kind}.yaml"
    cfg = load_validated(path, JudgePrompt)
    if cfg.kind != kind:
        raise ConfigError(f"{path}: kind: this is a {cfg.kind} judge prompt, a {kind} one was asked for")
    return cfg


# --- strict parsing -------------------------------------------------------------------------------

def _label_values(text: str, label: str) -> list[str]:
    """The values of every line labelled `label:` (case-insensitive), stripped."""
    pattern = re.compile(rf"^\s*{re.escape(label)}\s*:(.*)$", re.IGNORECASE)
    return [m.group(1).strip() for line in text.splitlines() if (m := pattern.match(line))]


def parse_absolute(text: str | None) -> dict:
    """`{"tone": int|None, "addresses_problem": bool|None, "parsed": bool}`: exactly one `Tone:` line
    with an integer in 1..10 and exactly one `Addresses problem:` line with yes/no; anything else
    gives parsed False and both None."""
    failed = {"tone": None, "addresses_problem": None, "parsed": False}
    if not text:
        return failed
    tones, addressed = _label_values(text, "Tone"), _label_values(text, "Addresses problem")
    if len(tones) != 1 or len(addressed) != 1:
        return failed
    if not re.fullmatch(r"\d{1,2}", tones[0]) or not TONE_MIN <= int(tones[0]) <= TONE_MAX:
        return failed
    answer = addressed[0].lower()
    if answer not in ("yes", "no"):
        return failed
    return {"tone": int(tones[0]), "addresses_problem": answer == "yes", "parsed": True}


def parse_pairwise(text: str | None) -> Literal["A", "B", "tie"] | None:
    """"A", "B" or "tie" from exactly one `Winner:` line; None for anything else."""
    if not text:
        return None
    winners = _label_values(text, "Winner")
    if len(winners) != 1:
        return None
    return {"a": "A", "b": "B", "tie": "tie"}.get(winners[0].lower())


# --- asking the judge ------------------------------------------------------------------------------

def _ask(backend: Backend, prompt_cfg: JudgePrompt, requests: list[Request]) -> list[tuple[str | None, str | None]]:
    """(text, error) per request; a backend that raises fails every request of the call."""
    if not requests:
        return []
    sampling = Sampling(temperature=0.0, max_new_tokens=prompt_cfg.max_new_tokens)
    try:
        gens = backend.generate(requests, sampling)
    except Exception as e:  # noqa: BLE001 - recorded per request, never dropped
        return [(None, f"{type(e).__name__}: {e}")] * len(requests)
    if len(gens) != len(requests):
        raise RuntimeError(f"the judge backend returned {len(gens)} answers for {len(requests)} requests")
    return [(None, g.error or "failed") if (g.error or g.finish_reason == "error") else (g.text, None) for g in gens]


def _judge_name(backend: Backend) -> str:
    return f"{getattr(backend, 'name', '?')}:{getattr(backend, 'model', '?')}"


def absolute_judge(backend: Backend, prompt_cfg: JudgePrompt, rubric: str, items: list[dict]) -> list[dict]:
    """One record per item (`id`, `query`, `reply`): the judge's raw reply (`judgement`), its parse
    (`tone`, `addresses_problem`, `parsed`) and `error` (the request failed: no judgement)."""
    if prompt_cfg.kind != "absolute":
        raise ValueError(f"absolute_judge needs an absolute prompt, got a {prompt_cfg.kind} one")
    requests = [Request(id=str(it["id"]), messages=prompt_cfg.render(persona_rubric=rubric, query=it["query"],
                                                                      reply=it["reply"])) for it in items]
    records = []
    for it, (text, error) in zip(items, _ask(backend, prompt_cfg, requests)):
        records.append({"id": it["id"], "query": it["query"], "reply": it["reply"], "judge": _judge_name(backend),
                        "judgement": text, "error": error, **parse_absolute(text)})
    return records


def _order_winner(order: str, verdict: str | None) -> str | None:
    """A verdict of the order "xy" (x shown as A) or "yx" mapped back to "x", "y" or "tie"."""
    if verdict is None:
        return None
    if verdict == "tie":
        return "tie"
    shown_a = order[0]
    return shown_a if verdict == "A" else ("y" if shown_a == "x" else "x")


def combine(first: str | None, second: str | None) -> str:
    """The pair's outcome from its two per-order winners ("x", "y", "tie" or None = unparsable)."""
    if first is None or second is None:
        return "unparsable"
    results = {first, second}
    if results in ({"x"}, {"x", "tie"}):
        return "x"
    if results in ({"y"}, {"y", "tie"}):
        return "y"
    return "tie"  # split, or two ties


def pairwise_judge(backend: Backend, prompt_cfg: JudgePrompt, rubric: str, pairs: list[dict], seed: int) -> list[dict]:
    """Double-blind pairwise comparisons, each pair in both orders.

    `pairs`: dicts with `id`, `query`, `system_x`, `reply_x`, `system_y`, `reply_y`. One record per
    pair: `first_order` ("xy": x was shown as A first; "yx"), per order the raw judgement, the
    verdict as given (A/B/tie/None), the winner mapped back to x/y/tie and any error; then `outcome`
    ("x", "y", "tie", "unparsable", "failed") and `winner` (the winning system's name, "tie" or None).
    """
    if prompt_cfg.kind != "pairwise":
        raise ValueError(f"pairwise_judge needs a pairwise prompt, got a {prompt_cfg.kind} one")
    rng = random.Random(seed)
    requests, plan = [], []
    for p in pairs:
        first = rng.choice(("xy", "yx"))
        orders = (first, "yx" if first == "xy" else "xy")
        plan.append(orders)
        for order in orders:  # the order asked first comes first in the batch
            a, b = (p["reply_x"], p["reply_y"]) if order == "xy" else (p["reply_y"], p["reply_x"])
            requests.append(Request(id=f"{p['id']}:{order}",
                                    messages=prompt_cfg.render(persona_rubric=rubric, query=p["query"],
                                                               reply_a=a, reply_b=b)))
    answers = _ask(backend, prompt_cfg, requests)
    records = []
    for i, (p, orders) in enumerate(zip(pairs, plan)):
        per_order = {}
        for j, order in enumerate(orders):
            text, error = answers[2 * i + j]
            verdict = parse_pairwise(text)
            per_order[order] = {"judgement": text, "verdict": verdict, "winner": _order_winner(order, verdict),
                                "error": error}
        if any(v["error"] for v in per_order.values()):
            outcome = "failed"
        else:
            outcome = combine(per_order["xy"]["winner"], per_order["yx"]["winner"])
        winner = {"x": p["system_x"], "y": p["system_y"], "tie": "tie"}.get(outcome)
        records.append({"id": p["id"], "query": p["query"], "system_x": p["system_x"], "reply_x": p["reply_x"],
                        "system_y": p["system_y"], "reply_y": p["reply_y"], "judge": _judge_name(backend),
                        "seed": seed, "first_order": orders[0], "orders": per_order,
                        "outcome": outcome, "winner": winner})
    return records


# --- summaries ---------------------------------------------------------------------------------------

def win_rates(records: list[dict]) -> dict[tuple[str, str], dict]:
    """Per (system_x, system_y) as the records name them, from x's side: `n` parsed pairs (wins +
    ties + losses, the denominator of every rate), `wins`, `ties`, `losses`, `unparsable`, `failed`,
    `total` (all pairs), and each rate with its 95% Wilson interval (rates None when n is 0)."""
    groups: dict[tuple[str, str], dict] = {}
    for r in records:
        g = groups.setdefault((r["system_x"], r["system_y"]),
                              {"wins": 0, "ties": 0, "losses": 0, "unparsable": 0, "failed": 0})
        key = {"x": "wins", "tie": "ties", "y": "losses", "unparsable": "unparsable", "failed": "failed"}[r["outcome"]]
        g[key] += 1
    return {pair: rates_of(g) for pair, g in groups.items()}


def rates_of(counts: dict) -> dict:
    """`counts` (wins, ties, losses, unparsable, failed, and anything else kept as is) with `n` (the
    parsed pairs), `total`, and each rate over n with its 95% Wilson interval (None when n is 0)."""
    n = counts["wins"] + counts["ties"] + counts["losses"]
    row = {"n": n, **counts, "total": n + counts["unparsable"] + counts["failed"]}
    for name, k in (("win", counts["wins"]), ("tie", counts["ties"]), ("loss", counts["losses"])):
        row[f"{name}_rate"] = k / n if n else None
        row[f"{name}_ci"] = wilson(k, n)
    return row

"""General-ability probes: does a tone fine-tune forget what the base model could do?

Plain questions with exactly checkable short answers, from the formatting task's five
generator families (arithmetic, units, dates, strings, countries: ftscale.data.formatting),
without its JSON format demand: the question, then "Answer with just the answer." Scored by
`probe_correct` (the `probe_answer` evaluator of configs/tasks/probes.yaml), which accepts a
wordy reply as long as the answer is in it (see there).

Deterministic: the probes depend only on the seed (and the installed pycountry data, as the
formatting task's do). They are drawn from their own random stream, not the formatting task's,
so seed 0 does not simply repeat the formatting task's seed-0 questions (an overlap is possible
but rare and harmless: the tone experiment never trains on them).

    ftscale data generate probes --seed 0 --n-eval 100 --output-dir data/probes

Each line of `probes.jsonl` is a chat eval record:
`{"id", "messages": [{"role": "user", ...}], "reference": {"answer", "type", "family"[, "case_sensitive"]}}`.
"""
from __future__ import annotations

import random
import re
from pathlib import Path

from ftscale.atomic import write_jsonl
from ftscale.data.formatting import draw_distinct
from ftscale.eval.answers import answers_match

SUFFIX = " Answer with just the answer."


def generate_probes(seed: int = 0, n: int = 100) -> list[dict]:
    """`n` distinct probes, round-robin over the families (so any prefix stays balanced)."""
    rng = random.Random(f"ftscale-probes:{seed}")  # str seeds are hashed with SHA-512: stable across runs
    items = [(fam, q, a) for fam, q, a, _ in draw_distinct(rng, n)]
    if len(items) < n:
        raise ValueError(f"only {len(items)} distinct probes found, need {n}")
    out = []
    for i, (fam, q, a) in enumerate(items):
        ref = {"answer": a, "type": "string" if isinstance(a, str) else "number", "family": fam}
        # "Write X in uppercase": the lowercase word is in the question, so case is the whole answer.
        if isinstance(a, str) and a != a.lower() and re.search(rf"(?<!\w){re.escape(a.lower())}(?!\w)", q):
            ref["case_sensitive"] = True
        out.append({"id": f"probe-{fam}-{i:03d}", "messages": [{"role": "user", "content": q + SUFFIX}],
                    "reference": ref})
    return out


def write_probes(out_dir: Path, seed: int = 0, n: int = 100) -> dict:
    """Write `probes.jsonl` (chat eval records) atomically; return its path and count."""
    probes = generate_probes(seed, n)
    path = write_jsonl(Path(out_dir) / "probes.jsonl", probes)
    return {"probes": path, "n": len(probes)}


# ---------------------------------------------------------------- scoring
# A number as people write it: optional sign, thousands separators, decimals. The sign counts only
# where it cannot be a hyphen (not right after a letter or digit: "2024-05-01", "x-3").
_NUMBER = re.compile(r"(?<![\w.])(?:(?<![\w-])-)?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?![\d])")
_WRAP = " \t\r\n\"'`*_.!:;()[]{}"


def _numbers(text: str) -> list[str]:
    return [m.group(0).replace(",", "") for m in _NUMBER.finditer(text)]


def probe_correct(output: str, reference: dict) -> float:
    """1.0 if the reply gives the reference answer, else 0.0.

    Numbers: the LAST number in the reply must match, with the formatting task's tolerance
    (`answers_match`: relative or absolute 1e-3), so "3 + 4 = 7" and "The answer is 7." are
    right and "7? No, 8." is wrong. Numbers written as words are not read.
    Strings: the whole reply, stripped of quotes, markdown emphasis and end punctuation, matches
    (`answers_match`: case- and space-insensitive); or the answer occurs in the reply on word
    boundaries, for answers of 3 or more characters, or for shorter ones (single letters, codes)
    when quoted/emphasised or the reply's first or last word ("DE (Germany)", "It ends with z.").
    Case matters where reference["case_sensitive"] (the uppercase questions, whose lowercase word
    is in the question itself). A reply that hedges between several answers can pass: a heuristic.
    """
    if not isinstance(output, str) or not output.strip():
        return 0.0
    gold = reference["answer"]
    if reference.get("type") == "number" or (isinstance(gold, (int, float)) and not isinstance(gold, bool)):
        nums = _numbers(output)
        return float(bool(nums) and answers_match(nums[-1], reference))
    gold = str(gold)
    case = reference.get("case_sensitive", False)
    whole = output.strip().strip(_WRAP)
    if (whole == gold) if case else answers_match(whole, {"answer": gold, "type": "string"}):
        return 1.0
    flags = 0 if case else re.IGNORECASE
    body = r"\s+".join(re.escape(w) for w in gold.split())
    if len(gold) >= 3 and re.search(rf"(?<!\w){body}(?!\w)", output, flags):
        return 1.0
    quoted = rf"(?:[\"'`*]|\*\*){body}(?:[\"'`*]|\*\*)"  # "a", 'a', `a`, *a*, **a**
    last = rf"(?<!\w){body}[\s\"'`*_.!)]*$"
    first = rf"^[\s\"'`*_]*{body}(?!\w)"
    text = output.strip()
    return float(any(re.search(p, text, flags) for p in (quoted, last, first)))


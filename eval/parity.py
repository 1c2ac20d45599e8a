"""Do two evaluations of the same weights answer alike? Train/serve parity (in-process transformers
against vLLM) and the QLoRA merge table share this one computation.

Given two evaluations on the same eval items (their generations.jsonl), parity is the share of items
whose greedy answers are identical, character for character (with its Wilson interval), and the paired
difference of a metric (eval/stats.py). A pair is flagged when the answers differ beyond what numerics
alone make of them: the embedded 135M model in bf16 has many near-ties between its two top tokens, and
in-process and vLLM answers of one adapter agree on about 69% of items (docs/benchmarks.md), so a pair
is flagged when even the upper end of the identical share's 95% interval is below IDENTICAL_MIN, or the
metric differs by more than METRIC_MAX with an interval that excludes 0.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from ftscale.errors import DataError

from .qlora_labels import ON_BF16, SERVED, SERVED_MERGE, merged_label
from .stats import PairedDiff, align, item_scores, paired_difference, wilson

IDENTICAL_MIN = 0.6
METRIC_MAX = 0.1
# what usually makes two engines answer differently for one adapter (vllm#10798, vllm#47026)
USUAL_CAUSES = ("the chat template (a different one on each side, or a default system prompt added by one)",
                "the end-of-turn token (one side stops at another token, or does not stop)",
                "the dtype (bf16 on one side, fp32 or fp16 on the other)",
                "the LoRA rank or scaling (rsLoRA, a max-lora-rank cap, an adapter served on another base)",
                "prompt truncation (a shorter max_model_len or max_length on one side)")


@dataclass(frozen=True)
class Parity:
    """Two evaluations of the same items compared: identical answers and a metric's paired difference."""

    identical: int
    n: int
    low: float
    high: float
    metric: str
    difference: PairedDiff | None  # None when the metric has no per-item values on both sides

    @property
    def share(self) -> float:
        return self.identical / self.n if self.n else float("nan")

    @property
    def flagged(self) -> bool:
        apart = self.difference is not None and abs(self.difference.diff) > METRIC_MAX and \
            not self.difference.contains_zero()
        return self.n > 0 and (self.high < IDENTICAL_MIN or apart)

    def identical_text(self) -> str:
        return f"{self.identical}/{self.n} = {self.share:.2f} [{self.low:.2f}, {self.high:.2f}]" if self.n else "–"

    def difference_text(self) -> str:
        return self.difference.text() if self.difference is not None else "–"


def generation_records(generations: str | Path, *keys: str) -> list[dict]:
    """The records of a generations.jsonl, each checked to hold id, output and `keys` (file:line otherwise)."""
    out = []
    path = Path(generations)
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            try:
                rec = json.loads(line)
                for key in ("id", "output", *keys):
                    rec[key]
            except (json.JSONDecodeError, KeyError, TypeError) as e:
                raise DataError(f"{path}:{lineno}: not a generation record ({e})") from None
            out.append(rec)
    return out


def answers(generations: str | Path) -> dict[str, str | None]:
    """Each item's answer by id (None for a failed request), from a generations.jsonl."""
    return {str(rec["id"]): None if rec.get("error") is not None else rec["output"]
            for rec in generation_records(generations)}


def compare(a: str | Path, b: str | Path, metric: str, cache: dict | None = None) -> Parity:
    """Evaluation a against evaluation b (their generations files) on the items both answered."""
    cache = {} if cache is None else cache
    left, right = answers(a), answers(b)
    shared = [i for i in left if i in right and left[i] is not None and right[i] is not None]
    same = sum(left[i] == right[i] for i in shared)
    low, high = wilson(same, len(shared))
    x, y, ids, _ = align([item_scores(a, metric, cache)], [item_scores(b, metric, cache)])
    difference = paired_difference(x, y) if ids else None
    return Parity(same, len(shared), low, high, metric, difference)


def verdict(p: Parity) -> str:
    """One cell of a table: ok, or flagged with the usual causes."""
    if not p.flagged:
        return "ok"
    return ("**flagged**: beyond numerics; check " + "; ".join(USUAL_CAUSES))


THRESHOLD_NOTE = (f"Flagged: the identical share's 95% interval lies wholly below {IDENTICAL_MIN:.0%} (in-process and vLLM "
                  "answers of one adapter agree on about 69% of items from bf16 near-ties alone), or the metric differs "
                  f"by more than {METRIC_MAX} with an interval that excludes 0.")


# (the vLLM evaluation's label, the in-process labels it is compared with, first found wins): the same weights
# on both sides. An adapter served as a LoRA module sits on the bf16 base (a QLoRA adapter's in-process
# counterpart on that base is hf-on-bf16); a merged checkpoint is compared with the same merge in-process.
ENGINE_PAIRS = (("vllm", (ON_BF16, "hf")), (SERVED, (merged_label("dequantized"), merged_label("original"))))


def engine_pairs(rows: list) -> list[tuple]:
    """(in-process row, vLLM row) of one cell, prompt and temperature evaluating the same weights."""
    by_key = {(r.run_dir, r.prompt_variant, r.temperature, r.system): r for r in rows}
    pairs = []
    for r in rows:
        for served, local in ENGINE_PAIRS:
            if r.system != served:
                continue
            if served == SERVED:  # the merge vLLM served: the one its manifest names, else any
                local = _served_merge(r, local)
            twin = next((by_key[k] for k in ((r.run_dir, r.prompt_variant, r.temperature, s) for s in local)
                         if k in by_key), None)
            if twin is not None:
                pairs.append((twin, r))
    return pairs


def _served_merge(row, local: tuple[str, ...]) -> tuple[str, ...]:
    manifest = Path(row.run_dir) / SERVED_MERGE  # ftscale/qlora_study.py writes it
    into = json.loads(manifest.read_text()).get("into") if manifest.is_file() else None
    return (merged_label(into),) if into else local


def parity_lines(rows: list, metric: str, cache: dict) -> list[str]:
    """The summary's train/serve parity section: every adapter evaluated both in-process and through vLLM."""
    pairs = engine_pairs(rows)
    if not pairs:
        return []
    head = ["train examples", "seed", "prompt", "temperature", "in-process", "vLLM", "identical answers [95% CI]",
            f"{metric}: vLLM − in-process [95% CI]", "verdict"]
    lines = ["", "## Train/serve parity: in-process against vLLM", "",
             "The same weights answered in-process (transformers) and through vLLM, on the same items: the share of "
             "greedy answers identical character for character, and the paired difference of the metric. "
             + THRESHOLD_NOTE, "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for local, served in pairs:
        p = compare(served.generations, local.generations, metric, cache)
        lines.append(f"| {local.num_train_examples} | {local.seed} | {local.prompt_variant} | {local.temperature:g} | "
                     f"{local.system} | {served.system} | {p.identical_text()} | {p.difference_text()} | {verdict(p)} |")
    return lines

"""Does a model answer like another one, token by token? The share of next tokens on which the two agree
when both are fed the same text: the prompt and the first model's own greedy answer (teacher forcing).

Identical whole greedy answers (eval/parity.py) are a harsh measure for two sets of nearly equal weights:
one near-tie early in an answer changes everything after it. Forced along one answer, every position is
compared on its own, so this measure says how close the weights are. It is what shows which merge of a
QLoRA adapter keeps the model it trained (ftscale/qlora_study.py): the merge into the dequantized nf4
weights it trained against, or into the original bf16 weights.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .parity import generation_records


@dataclass(frozen=True)
class TokenAgreement:
    """Next tokens (greedy choices) two models agree on along the reference's answers."""

    agree: int
    total: int
    max_logit_diff: float  # the largest absolute difference of one logit at one position

    @property
    def share(self) -> float:
        return self.agree / self.total if self.total else float("nan")

    def text(self) -> str:
        return f"{self.agree}/{self.total} = {self.share:.3f} (largest logit gap {self.max_logit_diff:.2f})"


def answers_of(generations: str | Path) -> list[tuple[list[dict], str]]:
    """(prompt messages, answer) of every answered item of an evaluation's generations.jsonl."""
    return [(g["prompt"], g["output"]) for g in generation_records(generations, "prompt")
            if g.get("error") is None and g["output"]]


def agreement(reference, candidate, items: list[tuple[list[dict], str]]) -> TokenAgreement:
    """How often `candidate`'s greedy next token is `reference`'s, along each item's answer (both HF backends
    with `next_token_logits`)."""
    agree = total = 0
    gap = 0.0
    for messages, answer in items:
        ref, cand = reference.next_token_logits(messages, answer), candidate.next_token_logits(messages, answer)
        agree += int((ref.argmax(-1) == cand.argmax(-1)).sum())
        total += ref.shape[0]
        gap = max(gap, float((ref - cand).abs().max())) if ref.numel() else gap
    return TokenAgreement(agree, total, gap)

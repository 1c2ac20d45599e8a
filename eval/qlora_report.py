"""The summary's QLoRA sections (ftscale/qlora_study.py measures them): each QLoRA adapter beside the
plain LoRA of the same size, and the table of how its answers change from the 4-bit base it trained on
to the bf16 base, to each merge, and to the merge served by vLLM. Paired per item (eval/parity.py)."""

from __future__ import annotations

from pathlib import Path

from ftscale.rundir import TRAIN_METRICS, read_json

from .parity import compare
from .qlora_labels import LORA, MERGES, ON_BF16, SERVED, SERVED_MERGE, TOKEN_AGREEMENT, merged_label, twin_dir
from .report_document import fmt
from .stats import item_scores, mean_interval


def _qlora_rows(rows: list) -> list:
    """The in-process evaluations of trained QLoRA cells: (a), the adapter on the 4-bit base it trained on."""
    return [r for r in rows if r.system == "hf" and r.num_train_examples > 0 and r.quantization == "4bit"]


def _score(r, metric: str, cache: dict) -> str:
    values = list(item_scores(r.generations, metric, cache).values())
    if not values:
        return fmt(r.metric(metric))
    mean, low, high = mean_interval(values)
    return f"{mean:.3f} [{low:.3f}, {high:.3f}]"


def _training(r) -> dict:
    return read_json(Path(r.run_dir) / TRAIN_METRICS) or {}


def _mb(v) -> str:
    return "–" if v is None else f"{v:,.0f}"


def beside_lora(rows: list, metric: str, cache: dict) -> list[str]:
    """QLoRA (a) beside the LoRA of the same size: scores, their paired difference, memory and speed of each."""
    by = {(r.run_dir, r.prompt_variant, r.temperature, r.system): r for r in rows}
    pairs = []
    for a in _qlora_rows(rows):
        twin = by.get((str(twin_dir(a.run_dir)), a.prompt_variant, a.temperature, LORA))
        if twin is not None:
            pairs.append((a, twin))
    if not pairs:
        return []
    head = ["train examples", "seed", "prompt", f"QLoRA {metric}", f"LoRA {metric}", "QLoRA − LoRA [95% CI]",
            "identical answers", "peak memory MB (QLoRA / LoRA)", "train tokens/s (QLoRA / LoRA)",
            "train time s (QLoRA / LoRA)"]
    lines = _section("QLoRA beside LoRA",
                     "Each QLoRA adapter (trained and evaluated in-process on the 4-bit nf4 base) beside a plain LoRA "
                     "of the same size, seed and settings (trained and evaluated on the bf16 base): scores with their "
                     "95% intervals, the paired difference on the same items, the share of identical greedy answers, "
                     "and each training's peak memory (the process's maximum resident memory on a CPU, allocated "
                     "memory on CUDA) and tokens/s.", head)
    for a, b in pairs:
        p = compare(a.generations, b.generations, metric, cache)
        ta, tb = _training(a), _training(b)
        lines.append(
            f"| {a.num_train_examples} | {a.seed} | {a.prompt_variant} | {_score(a, metric, cache)} | "
            f"{_score(b, metric, cache)} | {p.difference_text()} | {p.identical_text()} | "
            f"{_mb(ta.get('peak_memory_mb'))} / {_mb(tb.get('peak_memory_mb'))} | "
            f"{fmt(ta.get('train_tokens_per_s'), '.1f')} / {fmt(tb.get('train_tokens_per_s'), '.1f')} | "
            f"{fmt(ta.get('wall_time_s'), '.1f')} / {fmt(tb.get('wall_time_s'), '.1f')} |")
    return lines


def _section(title: str, intro: str, head: list[str]) -> list[str]:
    """A summary section's title, what it shows, and its table's header."""
    return ["", f"## {title}", "", intro, "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]


def _token_agreement(a, other) -> str:
    """(a) against `other`, next token by next token (ftscale/qlora_study.py measured it), else –."""
    from ftscale.eval.token_agreement import TokenAgreement

    found = ((read_json(Path(a.run_dir) / TOKEN_AGREEMENT) or {}).get("variants", {}).get(a.prompt_variant, {})
             .get(other.system))
    return TokenAgreement(**found).text() if found else "–"


def _merge_pairs(a, by: dict) -> list[tuple[str, str, object, object]]:
    """(pair, what it measures, x, y) of the merge table for the QLoRA row a, where both sides exist."""
    def get(system):
        return by.get((a.run_dir, a.prompt_variant, a.temperature, system))

    b, d = get(ON_BF16), get(SERVED)
    c = {m: get(merged_label(m)) for m in MERGES}
    served = read_json(Path(a.run_dir) / SERVED_MERGE) or {}
    out = [("(a) 4-bit base vs (b) bf16 base", "what quantization changes", a, b)]
    out += [(f"(a) 4-bit base vs (c) merged into {m}", f"what merging into the {m} weights changes", a, c[m])
            for m in MERGES]
    # (b) and the merge into the original weights differ only by the merge's rounding; (b) and the merge into
    # the dequantized weights by the quantization as well
    out += [(f"(b) bf16 base vs (c) merged into {m}", "the merge's rounding alone" if m == "original"
             else "what quantization changes, merged", b, c[m]) for m in MERGES]
    into = served.get("into")
    if into:
        out.append((f"(c) merged into {into} vs (d) the same served by vLLM", "what the engine changes", c[into], d))
    return [o for o in out if o[2] is not None and o[3] is not None]


def merge_table(rows: list, metric: str, cache: dict) -> list[str]:
    """The (a)/(b)/(c)/(d) table of every QLoRA cell the study measured."""
    by = {(r.run_dir, r.prompt_variant, r.temperature, r.system): r for r in rows}
    found = [(a, _merge_pairs(a, by)) for a in _qlora_rows(rows)]
    found = [(a, pairs) for a, pairs in found if len(pairs) > 1]
    if not found:
        return []
    head = ["train examples", "seed", "prompt", "pair", "measures", "identical answers [95% CI]",
            "next tokens agreeing, along (a)'s answers", f"{metric}: first − second [95% CI]",
            f"{metric} (first / second)"]
    lines = _section("Merging the QLoRA adapter",
                     "The QLoRA adapter (a) on the 4-bit base it trained on, (b) on the original bf16 base, (c) merged "
                     "into the original bf16 weights or into the dequantized nf4 weights it trained against (`ftscale "
                     "merge --into`; each merge computed in fp32, saved in bf16) and evaluated in-process, (d) the "
                     "default merge served by vLLM. Same items, greedy: the share of identical answers and the paired "
                     "metric difference. Against (a), also the share of next tokens on which both choose the same "
                     "when fed (a)'s own answers (teacher forcing, eval/token_agreement.py): one near-tie early in an "
                     "answer changes all of it, while this compares every position on its own, so it says how close "
                     "the weights are.", head)
    for a, pairs in found:
        for name, what, x, y in pairs:
            p = compare(x.generations, y.generations, metric, cache)
            tokens = _token_agreement(a, y) if x is a else "–"
            lines.append(f"| {a.num_train_examples} | {a.seed} | {a.prompt_variant} | {name} | {what} | "
                         f"{p.identical_text()} | {tokens} | {p.difference_text()} | {fmt(x.metric(metric))} / "
                         f"{fmt(y.metric(metric))} |")
    return lines


def qlora_lines(rows: list, metric: str, cache: dict) -> list[str]:
    return beside_lora(rows, metric, cache) + merge_table(rows, metric, cache)

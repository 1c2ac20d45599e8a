"""The QLoRA study's names, shared by what writes them (ftscale/qlora_study.py) and what reads them (the
summary's QLoRA and parity sections): its evaluations' system labels and the files beside a QLoRA cell."""

from __future__ import annotations

from pathlib import Path

LORA = "hf-lora"  # the plain LoRA of the same size, on the bf16 base
ON_BF16 = "hf-on-bf16"  # (b) the QLoRA adapter on the original bf16 base
SERVED = "vllm-merged"  # (d) the default merge served by vLLM
MERGES = ("original", "dequantized")  # (c) the weights an adapter can be merged into
SERVED_MERGE = "vllm-merged.json"  # which merge (d) served
TOKEN_AGREEMENT = "token-agreement.json"


def merged_label(into: str) -> str:
    """(c) a merge, evaluated in-process."""
    return f"hf-merged-{into}"


def twin_dir(cell: str | Path) -> Path:
    """The plain-LoRA twin of a QLoRA cell."""
    cell = Path(cell)
    return cell.with_name(cell.name + "-lora")

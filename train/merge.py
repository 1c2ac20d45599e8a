"""Merge a LoRA adapter into its base model and write a plain checkpoint.

    ftscale merge runs/formatting-smollm2-cpu/n0100-seed42 --output-dir runs/.../merged [--force]

The merge is computed in float32 and saved in the base checkpoint's dtype, so base,
adapter-on-base and merged models can be compared on the same server software.

Before it is saved, the merged model answers a few of its run's eval prompts greedily: each answer
must end its turn within max_new_tokens (a warning if not; the result goes into the manifest).

The target folder is checked before anything is computed: a merge writes into a new or empty
folder, or (with `--force`) replaces an earlier merge's folder, which its manifest
(`ftscale-merged.json`, listing every file the merge wrote) identifies. A folder holding anything
else - a run, an experiment, the working directory - is never emptied.
"""

from __future__ import annotations

import json
from pathlib import Path

from ftscale.atomic import atomic_dir, write_json
from ftscale.errors import FtscaleError
from ftscale.models import resolve
from ftscale.outputdir import check_output_dir
from ftscale.rundir import TRAIN_METRICS, adapter_dir
from ftscale.train import stop_check
from ftscale.train.chat_template_check import ADAPTER_TEMPLATE

MANIFEST = "ftscale-merged.json"
# what marks a folder as an experiment, a sweep or a run: never a merge target
EXPERIMENT_MARKERS = ("experiment.yaml", "results.db", TRAIN_METRICS, "config.yaml", "adapter_config.json")


def _run_of(adapter: Path) -> Path:
    return adapter.parent if adapter.name == "adapter" else adapter


def check_target(out: str | Path, adapter: Path, force: bool = False) -> Path:
    """The absolute target folder if a merge may write it; else FtscaleError saying what to do."""
    out, run = Path(out).resolve(), _run_of(adapter)
    if out == run or out in run.parents or out == adapter:
        raise FtscaleError(f"--output-dir {out}: it holds the adapter's run {run}; choose a new folder, e.g. {run / 'merged'}")
    markers = dict.fromkeys(EXPERIMENT_MARKERS, "an experiment or run directory")
    return check_output_dir(out, manifest=MANIFEST, writer="`ftscale merge`", written=lambda m: m.get("files"),
                            force=force, markers=markers)


# What a QLoRA adapter is merged into: the base weights its training saw, nf4-rounded (`dequantized`), or the
# base checkpoint's own (`original`). Dequantized keeps the adapter: 60/100 greedy answers identical to it on
# its 4-bit base against 7/100 (docs/benchmarks.md, "Merging a QLoRA adapter").
INTO = ("auto", "original", "dequantized")
QLORA_DEFAULT = "dequantized"


def trained_on_4bit(adapter: Path) -> bool:
    """Whether the adapter's run trained on QLoRA's 4-bit base (its config.yaml says so)."""
    import yaml

    config = _run_of(adapter) / "config.yaml"
    train = (yaml.safe_load(config.read_text()) or {}).get("train") or {} if config.is_file() else {}
    return train.get("quantization") == "4bit"


def merge_target(adapter: Path, into: str = "auto") -> str:
    """`original` or `dequantized`: `auto` is QLORA_DEFAULT for a QLoRA adapter, the original weights otherwise."""
    if into not in INTO:
        raise FtscaleError(f"--into {into}: one of {', '.join(INTO)}")
    if into == "dequantized" and not trained_on_4bit(adapter):
        raise FtscaleError(f"--into dequantized: {adapter} was not trained on a 4-bit base (its run's config.yaml "
                           "has no train.quantization: 4bit); merge it into the original weights")
    return (QLORA_DEFAULT if trained_on_4bit(adapter) else "original") if into == "auto" else into


def adapter_sha256(adapter: Path) -> str:
    """What names the adapter's weights: a merge made from other ones is another merge."""
    from ftscale.chatdata import sha256_file

    return sha256_file(adapter / "adapter_model.safetensors")


def _base_weights(path: str, into: str):
    """The base model in float32: its checkpoint's weights, or those rounded to nf4 as QLoRA trained on them."""
    import torch
    from transformers import AutoModelForCausalLM

    if into == "original":
        return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    from ftscale.quantization import bnb_config

    quant = bnb_config()
    model = AutoModelForCausalLM.from_pretrained(path, quantization_config=quant, dtype=quant.bnb_4bit_quant_storage,
                                                 device_map={"": "cuda" if torch.cuda.is_available() else "cpu"})
    return model.dequantize().to("cpu", torch.float32)  # nf4 blocks back to dense weights, then fp32 for the merge


def merge(adapter: str | Path, out: str | Path, base: str | None = None, dtype: str | None = None,
          force: bool = False, into: str = "auto") -> Path:
    """Write base + adapter as one checkpoint, in `dtype` (default: the base checkpoint's dtype). `into`:
    the base weights merged into (INTO; auto: the dequantized nf4 ones for a QLoRA adapter)."""
    adapter = adapter_dir(adapter)
    into = merge_target(adapter, into)
    out = check_target(out, adapter, force)  # before any model is loaded
    import torch
    from peft import PeftModel
    from transformers import AutoConfig, AutoTokenizer

    base = base or json.loads((adapter / "adapter_config.json").read_text())["base_model_name_or_path"]
    path = resolve(base, check=True)
    saved_dtype = getattr(torch, dtype) if dtype else AutoConfig.from_pretrained(path).dtype or torch.float32
    model = _base_weights(path, into)
    merged = PeftModel.from_pretrained(model, str(adapter)).merge_and_unload()
    tokenizer = AutoTokenizer.from_pretrained(path)
    if (adapter / ADAPTER_TEMPLATE).is_file():  # trained with a named template: the checkpoint formats as it did
        tokenizer.chat_template = (adapter / ADAPTER_TEMPLATE).read_text(encoding="utf-8")
    checked = _check_stopping(merged, tokenizer, adapter)
    with atomic_dir(out) as tmp:
        merged.to(saved_dtype).save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        files = sorted(str(p.relative_to(tmp)) for p in tmp.rglob("*") if p.is_file())
        write_json(tmp / MANIFEST, {"base": base, "adapter": str(adapter), "adapter_sha256": adapter_sha256(adapter),
                                    "dtype": str(saved_dtype), "into": into, "files": files, "stop_check": checked})
    return out


def _check_stopping(merged, tokenizer, adapter: Path) -> dict:
    """The merged model (float32, before the cast; the tokenizer and generation config it is saved
    with) answers its run's eval prompts: each answer must end its turn."""
    try:
        prompts, max_new_tokens = stop_check.run_prompts(_run_of(adapter), stop_check.PROMPTS)
        result = stop_check.check_model(merged, tokenizer, prompts, max_new_tokens, "after merging")
    except FtscaleError as e:  # no chat template to ask with, an unreadable eval set: the merge goes on
        return stop_check.skipped("after merging", str(e))
    stop_check.print_summary(result)
    return result


def merged_beside(adapter: str | Path, base: str | None = None) -> Path:
    """The run's merged checkpoint (`<run>/merged`), written the first time it is asked for."""
    out = adapter_dir(adapter).parent / "merged"
    if not out.is_dir():
        merge(adapter, out, base=base)
    return out

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


def merge(adapter: str | Path, out: str | Path, base: str | None = None, dtype: str | None = None,
          force: bool = False) -> Path:
    """Write base + adapter as one checkpoint, in `dtype` (default: the base checkpoint's dtype)."""
    adapter = adapter_dir(adapter)
    out = check_target(out, adapter, force)  # before any model is loaded
    import torch
    from peft import PeftModel
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    base = base or json.loads((adapter / "adapter_config.json").read_text())["base_model_name_or_path"]
    path = resolve(base, check=True)
    saved_dtype = getattr(torch, dtype) if dtype else AutoConfig.from_pretrained(path).dtype or torch.float32
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    merged = PeftModel.from_pretrained(model, str(adapter)).merge_and_unload()
    tokenizer = AutoTokenizer.from_pretrained(path)
    if (adapter / ADAPTER_TEMPLATE).is_file():  # trained with a named template: the checkpoint formats as it did
        tokenizer.chat_template = (adapter / ADAPTER_TEMPLATE).read_text(encoding="utf-8")
    checked = _check_stopping(merged, tokenizer, adapter)
    with atomic_dir(out) as tmp:
        merged.to(saved_dtype).save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        files = sorted(str(p.relative_to(tmp)) for p in tmp.rglob("*") if p.is_file())
        write_json(tmp / MANIFEST, {"base": base, "adapter": str(adapter), "dtype": str(saved_dtype), "files": files,
                                    "stop_check": checked})
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

"""Merge a LoRA adapter into its base model and write a plain checkpoint.

    ftscale merge runs/formatting-smollm2-cpu/n0100-seed42 --out runs/.../merged

The merge is computed in float32 and saved in the base checkpoint's dtype, so base,
adapter-on-base and merged models can be compared on the same server software.
"""

from __future__ import annotations

import json
from pathlib import Path

from ftscale.atomic import atomic_dir, write_json
from ftscale.models import resolve
from ftscale.rundir import adapter_dir


def merge(adapter: str | Path, out: str | Path, base: str | None = None, dtype: str | None = None) -> Path:
    """Write base + adapter as one checkpoint, in `dtype` (default: the base checkpoint's dtype)."""
    import torch
    from peft import PeftModel
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    adapter = adapter_dir(adapter)
    base = base or json.loads((adapter / "adapter_config.json").read_text())["base_model_name_or_path"]
    path = resolve(base)
    saved_dtype = getattr(torch, dtype) if dtype else AutoConfig.from_pretrained(path).dtype or torch.float32
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    merged = PeftModel.from_pretrained(model, str(adapter)).merge_and_unload()
    out = Path(out)
    with atomic_dir(out) as tmp:
        merged.to(saved_dtype).save_pretrained(tmp)
        AutoTokenizer.from_pretrained(path).save_pretrained(tmp)
        write_json(tmp / "ftscale-merged.json", {"base": base, "adapter": str(adapter), "dtype": str(saved_dtype)})
    return out


def merged_beside(adapter: str | Path, base: str | None = None) -> Path:
    """The run's merged checkpoint (`<run>/merged`), written the first time it is asked for."""
    out = adapter_dir(adapter).parent / "merged"
    if not out.is_dir():
        merge(adapter, out, base=base)
    return out

"""What vLLM cannot serve as a LoRA adapter, said before training rather than after.

The installed vLLM (vllm/lora/peft_helper.py) refuses adapters that change the base model's weights
when PEFT loads them or that add more than low-rank matrices: DoRA, PiSSA/OLoRA/LoftQ initialisations
(PEFT rewrites the base weights at load) and `modules_to_save` other than a classifier head. One
function says whether a `train.lora` section (or a saved adapter's adapter_config.json) is among them:
experiment and sweep configs call it at load when vLLM will serve their adapters, and so can any
command that is about to serve one.
"""

from __future__ import annotations

import json
from pathlib import Path

# initialisations that only set the adapter's starting weights, so that the saved adapter is a plain LoRA
# (vLLM's own list; PEFT writes a boolean for the default and for B = A = random)
PLAIN_INITS = ("default", "gaussian", "eva", "orthogonal", "mica", "lora_ga")
# vLLM keeps these as modules_to_save (classification heads); anything else is refused
SAVED_HEADS = ("classifier", "score")
MERGE_FIRST = "merge it first (`ftscale merge RUN`, then serve the merged checkpoint: `ftscale eval --backend vllm --merged`)"


def vllm_refusal(lora) -> str | None:
    """Why vLLM would refuse an adapter trained with `lora` (a `train.lora` LoraSpec, or the dict of a saved
    adapter_config.json), in one line with what works instead; None when vLLM serves it."""
    get = (lambda k, d=None: lora.get(k, d)) if isinstance(lora, dict) else (lambda k, d=None: getattr(lora, k, d))
    init = get("init_lora_weights", "default")
    init = "default" if isinstance(init, bool) else str(init)
    saved = [m for m in (get("modules_to_save") or []) if m not in SAVED_HEADS]
    if get("use_dora", False):
        return f"lora.use_dora: vLLM does not serve DoRA adapters; train a plain LoRA (use_dora: false) or {MERGE_FIRST}"
    if init.lower() in ("pissa", "olora", "loftq") or init.lower().startswith(("pissa_", "olora_")):
        return (f"lora.init_lora_weights: {init} rewrites the base weights when PEFT loads the adapter, which vLLM "
                "does not do; use init_lora_weights: default or gaussian, convert the adapter to a plain LoRA on save "
                f"(PEFT's path_initial_model_for_weight_conversion), or {MERGE_FIRST}")
    if init.lower() not in PLAIN_INITS:
        return f"lora.init_lora_weights: {init}: vLLM serves only adapters of a plain initialisation; {MERGE_FIRST}"
    if saved:
        return (f"lora.modules_to_save: {saved}: vLLM serves only the low-rank matrices of an adapter (modules_to_save "
                f"only for {', '.join(SAVED_HEADS)} heads); leave modules_to_save unset or {MERGE_FIRST}")
    return None


def adapter_refusal(adapter: str | Path) -> str | None:
    """`vllm_refusal` of a saved adapter (its folder, or a run folder holding adapter/)."""
    path = Path(adapter)
    path = path / "adapter" if (path / "adapter" / "adapter_config.json").is_file() else path
    config = path / "adapter_config.json"
    return vllm_refusal(json.loads(config.read_text())) if config.is_file() else None

"""QLoRA's 4-bit base, one definition for training it (train/sft.py) and evaluating on it (the hf backend)."""

from __future__ import annotations

import torch


def bnb_config():
    """QLoRA's 4-bit base: nf4, double quantization, bf16 compute. The 4-bit weights are packed into
    bf16 words (bnb_4bit_quant_storage) so that FSDP, which shards float tensors of one dtype, can
    shard them beside the bf16 rest of the model; training and the 4-bit evaluation share this."""
    from transformers import BitsAndBytesConfig  # imported when called: transformers is slow to import

    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                              bnb_4bit_compute_dtype=torch.bfloat16, bnb_4bit_quant_storage=torch.bfloat16)


def nf4_layer_check(size: int = 64) -> dict:
    """One nf4 layer quantized by bitsandbytes and run on this machine's device (CUDA, else the CPU), as
    QLoRA's base runs: its output against the full-precision layer's. Raises whatever bitsandbytes raises."""
    import bitsandbytes as bnb

    device = "cuda" if torch.cuda.is_available() else "cpu"
    torch.manual_seed(0)
    full = torch.nn.Linear(size, size, bias=False, dtype=torch.bfloat16)
    layer = bnb.nn.Linear4bit(size, size, bias=False, compute_dtype=torch.bfloat16, quant_type="nf4",
                              compress_statistics=True, quant_storage=torch.bfloat16)
    layer.weight = bnb.nn.Params4bit(full.weight.data.clone(), requires_grad=False, quant_type="nf4",
                                     compress_statistics=True, quant_storage=torch.bfloat16)
    layer, full = layer.to(device), full.to(device)  # bitsandbytes quantizes when the weight is moved
    x = torch.randn(4, size, dtype=torch.bfloat16, device=device)
    with torch.no_grad():
        error = float((layer(x) - full(x)).abs().mean() / full(x).abs().mean())
    return {"device": device, "quantized": bool(getattr(layer.weight, "bnb_quantized", False)),
            "relative_error": round(error, 4)}

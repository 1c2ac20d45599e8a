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

"""Training: LoRA/QLoRA with TRL (`sft.py`), adapter merging, OpenAI fine-tuning jobs."""

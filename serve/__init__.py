"""Serving: vLLM servers for base models and LoRA adapters (see the serving issue)."""

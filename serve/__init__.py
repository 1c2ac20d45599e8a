"""Serving: vLLM servers for base models and LoRA adapters, and the benchmarks measured through them."""

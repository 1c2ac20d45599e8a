"""The in-process transformers backend, with an optional PEFT adapter, applied unmerged as trained
(merged into bf16 weights it lost most of a small adapter's effect: docs/benchmarks.md).

Requests are generated in batches (sorted by prompt length to waste little padding; rows that have
ended leave the batch: hf_decode.py). All the requests of a batch are submitted together, so their
TTFT is the batch's first decoding step and each one's end-to-end latency ends when its own
end-of-turn token appears; with `batch_size=1` these are plain per-request latencies.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, set_seed

from ftscale import progress as progress_view  # the run's one view, when there is one
from ftscale.device import pick_device, resolve_dtype
from ftscale.models import resolve
from ftscale.quantization import bnb_config
from ftscale.train.chat_template_check import ADAPTER_TEMPLATE

from .base import Generation, Request, Sampling
from .hf_decode import StepClock, decode


class HFBackend:
    name = "hf"

    def __init__(self, model: str, adapter: str | None = None, batch_size: int = 16,
                 device: str | None = None, dtype: str = "auto", progress: bool = True, quantization: str = "none",
                 name: str = "hf", chat_template: str | None = None):
        from peft import PeftModel  # imported here: peft is heavy and only adapters need it

        self.name = name  # "hf-<model>" when it answers for another model than the experiment's
        self.device = device or pick_device()
        self.model = adapter or model
        self.batch_size = batch_size
        self.progress = progress
        path = resolve(model)
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        # a template named for training (train.chat_template) formats prompts as the training did: an
        # adapter carries it, the untrained base is given it
        carried = Path(adapter) / ADAPTER_TEMPLATE if adapter else None
        template = carried.read_text(encoding="utf-8") if carried is not None and carried.is_file() else chat_template
        if template is not None:
            self.tokenizer.chat_template = template
        self.tokenizer.padding_side = "left"  # decoder-only models continue from the right edge
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        if quantization == "4bit":  # the base as QLoRA trained on it (CUDA only): measures the train/serve mismatch
            net = AutoModelForCausalLM.from_pretrained(path, quantization_config=bnb_config(), dtype=torch.bfloat16,
                                                       device_map={"": self.device})
        else:
            net = AutoModelForCausalLM.from_pretrained(path, dtype=resolve_dtype(dtype)).to(self.device)
        if adapter:
            net = PeftModel.from_pretrained(net, adapter)
        self.net = net.eval()
        gen_eos = net.generation_config.eos_token_id
        self.eos_ids = set(gen_eos if isinstance(gen_eos, list) else [gen_eos]) | {self.tokenizer.eos_token_id}

    @torch.inference_mode()
    def next_token_logits(self, messages: list[dict], answer: str) -> torch.Tensor:
        """The logits this model gives each token of `answer` after the prompt and the answer's earlier tokens
        (teacher forcing), one row per answer token, in fp32."""
        prompt = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True,
                                                    return_dict=False)
        tokens = self.tokenizer(answer, add_special_tokens=False).input_ids
        ids = torch.tensor([prompt + tokens], device=self.device)
        return self.net(ids).logits[0, len(prompt) - 1:-1].float().cpu()

    @torch.inference_mode()
    def generate(self, requests: list[Request], sampling: Sampling) -> list[Generation]:
        set_seed(sampling.seed)
        encoded = [self.tokenizer.apply_chat_template(r.messages, add_generation_prompt=True, tokenize=True,
                                                      return_dict=False) for r in requests]
        order = sorted(range(len(requests)), key=lambda i: len(encoded[i]))
        results: list[Generation | None] = [None] * len(requests)
        kwargs = dict(do_sample=False) if sampling.temperature == 0 else dict(
            do_sample=True, temperature=sampling.temperature, top_p=sampling.top_p)
        if sampling.ignore_eos:
            kwargs["min_new_tokens"] = sampling.max_new_tokens
        bar = progress_view.bar(len(requests), f"generating ({self.model})", "req", disable=not self.progress)
        for start in range(0, len(order), self.batch_size):
            idx = order[start:start + self.batch_size]
            clock = StepClock(len(idx), self.eos_ids)
            t0 = time.perf_counter()
            answers = decode(self.net, [encoded[i] for i in idx], self.tokenizer.pad_token_id, self.eos_ids,
                             sampling.max_new_tokens, clock, self.device, **kwargs)
            t_end = time.perf_counter()
            for row, i in enumerate(idx):
                kept = answers[row]
                ended = bool(kept) and kept[-1] in self.eos_ids
                results[i] = Generation(
                    text=self.tokenizer.decode(kept, skip_special_tokens=True),
                    input_tokens=len(encoded[i]),
                    output_tokens=len(kept),
                    ttft_s=(clock.first or t_end) - t0,
                    latency_s=(clock.done[row] or t_end) - t0,
                    finish_reason="stop" if ended else "length",
                    extra={"batch_size": len(idx)},
                )
            bar.update(len(idx))
        bar.close()
        return results  # type: ignore[return-value]

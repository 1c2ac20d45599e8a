"""After training, merging and when serving: greedy answers to a few eval prompts must end their turn.

A model trained without its end-of-turn token in the loss, or whose generation config (or server)
does not stop on that token, runs on to max_new_tokens. The check asks N prompts greedily and
reports the rate of answers that end with the end-of-turn token before max_new_tokens; a rate
below 1 is a warning naming the likely cause. It never fails the command.

Imported by `ftscale serve` at start-up: torch, transformers and openai are imported by the
functions that use them.
"""

from __future__ import annotations

import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import yaml

from ftscale import paths
from ftscale.chatdata import read_jsonl
from ftscale.errors import FtscaleError

from .chat_template_check import as_ids, end_of_turn, eos_warning

PROMPTS = 8  # the default N (train.stop_check)
# asked where no eval set is at hand (a model served without a run's adapter)
FALLBACK_PROMPTS = ("What is the capital of France?", "What is 2 + 2?", "Which planet is closest to the sun?",
                    "Translate 'thank you' into French.")
# what became of one answer
STOPPED, EMITTED, OTHER, RAN_ON = "stopped", "emitted", "other", "ran_on"


def default_max_new_tokens() -> int:
    """The eval config's default, where a run names none."""
    # imported here: the config loads the task registry and scipy, which `ftscale serve` and `ftscale
    # doctor` must start without
    from ftscale.config import EvalSpec

    return EvalSpec().max_new_tokens


def eval_prompts(eval_file: str | Path | None, n: int) -> list[list[dict]]:
    """The first n prompts of an eval set (the fallback questions where there is none)."""
    if eval_file is not None and paths.shipped(eval_file).is_file():
        return [r["messages"] for r in read_jsonl(paths.shipped(eval_file), "eval")[:n]]
    return [[{"role": "user", "content": q}] for q in FALLBACK_PROMPTS[:n]]


def run_prompts(run_dir: Path, n: int) -> tuple[list[list[dict]], int]:
    """(the first n eval prompts, max_new_tokens) of the run an adapter was trained in, from its config."""
    config = Path(run_dir) / "config.yaml"
    cell = (yaml.safe_load(config.read_text()) or {}) if config.is_file() else {}
    data, evals = cell.get("data") or {}, cell.get("eval") or {}
    return eval_prompts(data.get("eval"), n), int(evals.get("max_new_tokens") or default_max_new_tokens())


def ending(generated: list[int], eos_ids: set[int], eot: int) -> str:
    """How generate() ended one answer: on end-of-turn, on another eos id, or not at all (with or
    without emitting end-of-turn on the way)."""
    cut = next((j for j, t in enumerate(generated) if t in eos_ids), None)
    if cut is not None and generated[cut] == eot:
        return STOPPED
    if eot in (generated if cut is None else generated[:cut]):
        return EMITTED
    return OTHER if cut is not None else RAN_ON


def check_model(model, tokenizer, prompts: list[list[dict]], max_new_tokens: int, where: str) -> dict:
    """Greedy answers of a transformers model (a PEFT model too) to `prompts`, judged by the eos ids of
    its generation config, which generate() stops on for whoever uses the model. Generation here also
    ends a row at end-of-turn: past it, an answer that did not stop there has failed already."""
    # seconds to import (torch): paid only where a model is checked
    import torch

    from ftscale.eval.backends.hf_decode import StepClock, decode

    eot = end_of_turn(tokenizer)
    eos_ids = as_ids(model.generation_config.eos_token_id)
    encoded = [tokenizer.apply_chat_template(p, add_generation_prompt=True, tokenize=True, return_dict=True)
               ["input_ids"] for p in prompts]
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eot
    ends = {*eos_ids, eot}
    was_training = model.training
    model.eval()
    with torch.inference_mode():  # batched as the evaluation batches, ended rows leaving the batch
        answers = decode(model, encoded, pad, ends, max_new_tokens, StepClock(len(encoded), ends), model.device,
                         do_sample=False, eos_token_id=sorted(ends), use_cache=True)
    model.train(was_training)
    endings = [ending(answer, set(eos_ids), eot) for answer in answers]
    text = tokenizer.decode([eot])
    return summary(endings, where, max_new_tokens, text, eos_warning(text, eot, eos_ids))


def summary(endings: list[str], where: str, max_new_tokens: int, text: str, runs_on_past: str) -> dict:
    """The rate of answers that ended their turn, and a warning naming the likely cause if not all did;
    `runs_on_past` is the cause where the model emits end-of-turn but generation does not stop there."""
    counts = {k: endings.count(k) for k in (STOPPED, EMITTED, OTHER, RAN_ON)}
    n = len(endings)
    causes = [f"{counts[EMITTED]} of {n} answers emitted {text!r} and ran on: {runs_on_past}"] if counts[EMITTED] else []
    if counts[OTHER]:
        causes.append(f"{counts[OTHER]} of {n} answers stopped on another eos token, not on {text!r}")
    if counts[RAN_ON]:
        causes.append(f"{counts[RAN_ON]} of {n} answers ran to max_new_tokens ({max_new_tokens}) without {text!r}: the model "
                      "has not learned to stop (its end-of-turn outside the loss or cut off by train.max_length: see "
                      "chat_template_check.json; too few steps) or its answers are longer than eval.max_new_tokens")
    rate = counts[STOPPED] / n if n else 0.0
    return {"where": where, "prompts": n, "max_new_tokens": max_new_tokens, "end_of_turn": text,
            "stop_rate": rate, **counts, "warning": "; ".join(causes) or None}


def check_served(base_url: str, api_key: str, names: list[str], prompts: list[list[dict]], max_tokens: int,
                 text: str) -> list[dict]:
    """The same check through a running OpenAI-compatible server (vLLM), for each served model name;
    the prompts are asked concurrently, so the server batches them."""
    from openai import OpenAI  # imported when used: `ftscale serve` starts without it

    from ftscale import loopback

    # a server on this machine (ftscale's own): never asked through an http_proxy
    http = {"http_client": loopback.httpx_client()} if loopback.is_loopback_url(base_url) else {}
    client = OpenAI(base_url=base_url, api_key=api_key, timeout=600, max_retries=0, **http)

    def ask(name_prompt):
        name, prompt = name_prompt
        reply = client.chat.completions.create(model=name, messages=prompt, max_tokens=max_tokens, temperature=0,
                                               extra_body={"skip_special_tokens": False})
        choice = reply.choices[0]
        if choice.finish_reason == "stop":
            return STOPPED
        return EMITTED if text in (choice.message.content or "") else RAN_ON

    pool = ThreadPoolExecutor(max_workers=min(16, len(names) * len(prompts)))
    try:
        endings = list(pool.map(ask, [(name, p) for name in names for p in prompts]))
    finally:
        pool.shutdown(wait=False, cancel_futures=True)  # Ctrl-C: the server is stopped, not waited on
    k = len(prompts)
    runs_on_past = (f"the server does not stop on {text!r}: neither the tokenizer's eos_token nor generation_config.json's "
                    "eos_token_id names it")
    return [summary(endings[i * k:(i + 1) * k], f"served as {name}", max_tokens, text, runs_on_past)
            for i, name in enumerate(names)]


def check_server(base_url: str, api_key: str, names: list[str], model_path: str, run: Path | None) -> None:
    """`ftscale serve`'s check, once the server is up: a few greedy answers of each served model (the
    eval prompts of `run`, the run an adapter was trained in, where there is one). Printed; whatever
    keeps it from asking is a warning, and the server goes on serving."""
    from openai import OpenAIError  # imported when used: `ftscale serve` starts without it
    from transformers import AutoTokenizer  # seconds to import: paid once the server is up

    try:
        prompts, max_tokens = run_prompts(run, PROMPTS) if run else (eval_prompts(None, PROMPTS), default_max_new_tokens())
        tokenizer = AutoTokenizer.from_pretrained(model_path)
        text = tokenizer.decode([end_of_turn(tokenizer)])
        results = check_served(base_url, api_key, names, prompts, max_tokens, text)
    except (FtscaleError, OpenAIError, OSError) as e:
        skipped("served", str(e).splitlines()[0])
        return
    for result in results:
        print_summary(result)


def print_summary(result: dict) -> None:
    """One line on stdout; the warning, if any, on stderr."""
    print(f"stop check ({result['where']}): {result['stopped']} of {result['prompts']} greedy answers ended their turn "
          f"with {result['end_of_turn']!r} within {result['max_new_tokens']} tokens "
          f"(stop rate {result['stop_rate']:.2f})", flush=True)
    if result["warning"]:
        print(f"warning: stop check ({result['where']}): {result['warning']}", file=sys.stderr, flush=True)


def skipped(where: str, why: str) -> dict:
    print(f"warning: stop check ({where}) skipped: {why}", file=sys.stderr, flush=True)
    return {"where": where, "skipped": why}


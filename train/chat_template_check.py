"""Before training: the chat template formats every example, and its end-of-turn token is trained.

The commonest complaint about a fine-tuned chat model is that it never stops: the template renders
no end-of-turn token after the assistant's answer, that token falls outside the loss (or is cut off
by max_length), or the generation config does not stop on it. Each training example is tokenised
here as TRL's SFTTrainer tokenises a conversational prompt/completion example for its completion-only
loss (the trained tokens are those after the common prefix of the prompt, rendered with the
generation prompt, and of the whole conversation), and its trained tokens must end with the
end-of-turn token, a special token of the tokenizer.

A base model without a template of its own names one: `train.chat_template: chatml`
(configs/chat_templates.yaml) or a path to a .jinja file.

Imported by the config (which the CLI imports at start-up): transformers and TRL are imported by the
functions that need them, and the callers pass tokenizers in.
"""

from __future__ import annotations

import difflib
import sys
from pathlib import Path

from ftscale import paths
from ftscale.errors import FtscaleError
from ftscale.yamlfile import load_yaml

NAMED_TEMPLATES = paths.CONFIGS / "chat_templates.yaml"
# a named template is saved beside the adapter trained with it, so a merge (and whoever loads the
# adapter) formats prompts as the training did
ADAPTER_TEMPLATE = "chat_template.jinja"
REPORT = "chat_template_check.json"
# the conversation whose rendering says which token ends the assistant's turn (no training data at hand)
PROBE = [{"role": "user", "content": "Hello"}, {"role": "assistant", "content": "Hello to you"}]


def named_templates() -> dict[str, str]:
    data, _ = load_yaml(NAMED_TEMPLATES)
    return data


def template_text(spec: str) -> str:
    """The Jinja text of `train.chat_template`: a named template or a .jinja file; ValueError if neither."""
    named = named_templates()
    if spec in named:
        return named[spec]
    path = Path(spec)
    if path.suffix == ".jinja" and path.is_file():
        return path.read_text(encoding="utf-8")
    if path.suffix == ".jinja":
        raise ValueError(f"{spec}: file not found")
    close = difflib.get_close_matches(spec, list(named), n=1, cutoff=0.5)
    hint = f"did you mean {close[0]!r}? " if close else ""
    raise ValueError(f"unknown chat template {spec!r}: {hint}valid: {', '.join(named)}, or a path to a .jinja file")


def use_template(tokenizer, spec: str | None) -> None:
    """Give the tokenizer the named template (it then renders for training, and is saved with the adapter)."""
    if spec is not None:
        tokenizer.chat_template = template_text(spec)


def is_turn_token(tokenizer, token_id: int) -> bool:
    """A special (added) token: one the model can learn to emit as a single step, unlike plain text."""
    return token_id in tokenizer.all_special_ids or token_id in tokenizer.get_added_vocab().values()


def trained_tokens(tokenizer, prompt: list[dict], completion: list[dict]) -> tuple[list[int], int]:
    """(token ids of the whole conversation, index of its first trained token), as TRL tokenises a
    conversational prompt/completion example with completion_only_loss."""
    from trl.data_utils import common_prefix_length  # TRL imports torch: seconds, paid only by a check

    prompt_ids = tokenizer.apply_chat_template(prompt, add_generation_prompt=True, tokenize=True,
                                               return_dict=True)["input_ids"]
    ids = tokenizer.apply_chat_template(prompt + completion, tokenize=True, return_dict=True)["input_ids"]
    return ids, common_prefix_length(prompt_ids, ids)


def last_trained_token(tokenizer, ids: list[int], start: int) -> int | None:
    """The index of the last trained token that is not whitespace (a newline may follow end-of-turn)."""
    for i in range(len(ids) - 1, start - 1, -1):
        if tokenizer.decode([ids[i]]).strip():
            return i
    return None


def end_of_turn(tokenizer) -> int:
    """The token id that ends the assistant's turn in the tokenizer's chat template; FtscaleError if none."""
    if not getattr(tokenizer, "chat_template", None):
        raise FtscaleError("the tokenizer has no chat template")
    ids, start = trained_tokens(tokenizer, PROBE[:1], PROBE[1:])
    at = last_trained_token(tokenizer, ids, start)
    if at is None or not is_turn_token(tokenizer, ids[at]):
        raise FtscaleError("the chat template ends the assistant's turn without a special end-of-turn token")
    return ids[at]


def generation_eos_ids(path: str) -> list[int]:
    """The ids generate() stops on: the generation config's eos_token_id (else the model config's)."""
    from transformers import AutoConfig, GenerationConfig  # seconds to import: only when a check runs

    try:
        gen = GenerationConfig.from_pretrained(path)
    except OSError:  # no generation_config.json: transformers derives it from config.json
        gen = GenerationConfig.from_model_config(AutoConfig.from_pretrained(path))
    return as_ids(gen.eos_token_id)


def as_ids(eos) -> list[int]:
    return [] if eos is None else [eos] if isinstance(eos, int) else list(eos)


def _source(spec: str | None, model: str) -> str:
    return f"train.chat_template {spec}" if spec else f"the chat template of {model!r}"


def _fix(spec: str | None) -> str:
    if spec:
        return f"fix {spec} or name another (--train.chat_template chatml)"
    return ("report it to the model's maintainers, or name a template that works: --train.chat_template chatml "
            "(or a .jinja file)")


def _render(tokenizer, record: dict, i: int, spec: str | None, model: str) -> tuple[list[int], int]:
    messages = record["messages"]
    try:
        return trained_tokens(tokenizer, messages[:-1], messages[-1:])
    except Exception as e:  # noqa: BLE001 - a template raises what it likes (TemplateError, TypeError, KeyError...)
        roles = ", ".join(m["role"] for m in messages)
        raise FtscaleError(f"{_source(spec, model)} fails to render training example {i} (roles {roles}): "
                           f"{type(e).__name__}: {e}; {_fix(spec)}") from None


def _turn_end(tokenizer, record: dict, i: int, spec: str | None, model: str) -> tuple[int, int]:
    """(the id ending the example's trained tokens, its index); FtscaleError if it is no end-of-turn token."""
    ids, start = _render(tokenizer, record, i, spec, model)
    at = last_trained_token(tokenizer, ids, start)
    if at is None:
        raise FtscaleError(f"{_source(spec, model)} leaves no token of training example {i}'s answer in the loss; "
                           f"{_fix(spec)}")
    if not is_turn_token(tokenizer, ids[at]):
        raise FtscaleError(f"{_source(spec, model)} ends the assistant's turn without an end-of-turn token: the last "
                           f"trained token of training example {i} is {tokenizer.decode([ids[at]])!r}, not a special "
                           f"token, so the model would never learn to stop; {_fix(spec)}")
    return ids[at], at


def check_before_training(tokenizer, records: list[dict], *, model: str, spec: str | None,
                          max_length: int | None, eos_ids: list[int]) -> dict:
    """Refuse (FtscaleError) a template that is missing, fails to render an example or leaves the
    end-of-turn token out of the loss; return the report, with warnings for what only some examples
    or the generation config get wrong."""
    if not getattr(tokenizer, "chat_template", None):
        raise FtscaleError(f"model {model!r} has no chat template (a base model, not a chat model): pick a chat/"
                           "instruct model, or name a template to train it with: --train.chat_template chatml")
    eot, cut = None, 0
    for i, record in enumerate(records, 1):
        token, at = _turn_end(tokenizer, record, i, spec, model)
        if eot is None:
            eot = token
        elif token != eot:
            raise FtscaleError(f"{_source(spec, model)} ends training example {i}'s answer with "
                               f"{tokenizer.decode([token])!r} but example 1's with {tokenizer.decode([eot])!r}; "
                               f"{_fix(spec)}")
        cut += max_length is not None and at >= max_length
    text = tokenizer.decode([eot])
    if cut == len(records):
        raise FtscaleError(f"every training example is longer than train.max_length ({max_length} tokens): the "
                           f"end-of-turn {text!r} is cut off in all of them; raise --train.max_length")
    warnings = []
    if cut:
        warnings.append(f"{cut} of {len(records)} training examples are longer than train.max_length ({max_length} "
                        f"tokens): their end-of-turn {text!r} is cut off, so they teach the model to run on; "
                        "raise --train.max_length")
    if eot not in eos_ids:
        warnings.append(eos_warning(text, eot, eos_ids))
    return {"chat_template": spec or "the tokenizer's", "end_of_turn": text, "end_of_turn_id": eot,
            "examples": len(records), "end_of_turn_in_loss": len(records) - cut, "cut_by_max_length": cut,
            "generation_eos_ids": eos_ids, "warnings": warnings}


def eos_warning(text: str, eot: int, eos_ids: list[int]) -> str:
    return (f"the generation config's eos_token_id {eos_ids} does not include the end-of-turn {text!r} ({eot}): "
            f"generate() will not stop at the end of the turn; add {eot} to eos_token_id in generation_config.json")


def print_report(report: dict) -> None:
    """One line on stdout; each warning on stderr."""
    print(f"chat template ({report['chat_template']}): {report['end_of_turn_in_loss']} of {report['examples']} "
          f"training examples end their trained tokens with the end-of-turn {report['end_of_turn']!r}", flush=True)
    for w in report["warnings"]:
        print(f"warning: {w}", file=sys.stderr, flush=True)


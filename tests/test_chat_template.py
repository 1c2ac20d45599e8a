"""Chat templates and stopping: before training, every example renders and its trained tokens end
with the end-of-turn token; after training, merging and when serving, greedy answers end their turn."""

from __future__ import annotations

import json
import threading
from pathlib import Path
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import torch
from datasets import Dataset
from peft import LoraConfig, PeftModel
from transformers import AutoModelForCausalLM, AutoTokenizer
from trl import SFTTrainer

from ftscale import completion, models
from ftscale.chatdata import read_jsonl, to_prompt_completion
from ftscale.cli import main
from ftscale.config import load_config
from ftscale.errors import ConfigError, FtscaleError
from ftscale.eval.backends import Request, Sampling, make_backend
from ftscale.serve.server import VLLMServer, server_for
from ftscale.stepinputs import train_inputs
from ftscale.train import stop_check
from ftscale.train.chat_template_check import (check_before_training, generation_eos_ids, template_text,
                                               trained_tokens)
from ftscale.train.merge import merge
from ftscale.train.sft import sft_config

from conftest import MAIN_CONFIG, ROOT

EXAMPLES = read_jsonl(ROOT / "data/formatting/train.jsonl", "train")[:16]
# ChatML, each broken the way real templates are
DROPS_END_OF_TURN = ("{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\\n' + m['content'] }}"
                     "{% if m['role'] != 'assistant' %}{{ '<|im_end|>\\n' }}{% endif %}{% endfor %}"
                     "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}")
END_OF_TURN_WITH_THE_NEXT_MESSAGE = ("{% for m in messages %}{% if not loop.first %}{{ '<|im_end|>\\n' }}{% endif %}"
                                     "{{ '<|im_start|>' + m['role'] + '\\n' + m['content'] }}{% endfor %}"
                                     "{% if add_generation_prompt %}{{ '<|im_end|>\\n<|im_start|>assistant\\n' }}{% endif %}")
NO_SYSTEM_ROLE = ("{% for m in messages %}{% if m['role'] == 'system' %}{{ raise_exception('System role not supported') }}"
                  "{% endif %}{{ '<|im_start|>' + m['role'] + '\\n' + m['content'] + '<|im_end|>\\n' }}{% endfor %}"
                  "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}")


@pytest.fixture
def embedded_path(embedded_model) -> str:
    return models.resolve(embedded_model)


def _refused(capsys, argv: list) -> str:
    """The CLI exits 2 with one `error:` line."""
    code = main([str(a) for a in argv])
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


def _train(run_dir, *extra) -> list:
    return ["train", "--config", MAIN_CONFIG, "--num_train_examples", "8", "--output_dir", run_dir, *extra]


def test_the_embedded_model_passes_every_check_before_training(embedded_path):
    tokenizer = AutoTokenizer.from_pretrained(embedded_path)
    eos_ids = generation_eos_ids(embedded_path)
    report = check_before_training(tokenizer, EXAMPLES, model="smollm2-135m", spec=None, max_length=512, eos_ids=eos_ids)
    assert report["end_of_turn"] == "<|im_end|>" and report["end_of_turn_id"] in eos_ids
    assert report["end_of_turn_in_loss"] == len(EXAMPLES) and report["cut_by_max_length"] == 0
    assert report["warnings"] == []
    # a max_length that cuts some answers short: their end-of-turn is not trained, which is said
    lengths = sorted(len(trained_tokens(tokenizer, r["messages"][:-1], r["messages"][-1:])[0]) for r in EXAMPLES)
    max_length = lengths[8] - 2  # end-of-turn is the last token but the newline after it
    cut = check_before_training(tokenizer, EXAMPLES, model="smollm2-135m", spec=None, max_length=max_length,
                                eos_ids=eos_ids)
    expected = sum(n - 2 >= max_length for n in lengths)
    assert cut["cut_by_max_length"] == expected >= 8 and cut["end_of_turn_in_loss"] == len(EXAMPLES) - expected
    assert cut["warnings"] == [f"{expected} of 16 training examples are longer than train.max_length ({max_length} "
                               "tokens): their end-of-turn '<|im_end|>' is cut off, so they teach the model to run on; "
                               "raise --train.max_length"]
    with pytest.raises(FtscaleError, match="every training example is longer than train.max_length"):
        check_before_training(tokenizer, EXAMPLES, model="smollm2-135m", spec=None, max_length=16, eos_ids=eos_ids)


def test_the_trained_tokens_are_those_trl_puts_in_the_loss(embedded_path, tmp_path):
    """The check's tokenisation against SFTTrainer's own: the labels that are not -100 are the tokens
    the check calls trained, and they end with end-of-turn (and the newline after it)."""
    cfg = load_config(MAIN_CONFIG)
    tokenizer = AutoTokenizer.from_pretrained(embedded_path)
    model = AutoModelForCausalLM.from_pretrained(embedded_path, dtype=torch.float32)
    trainer = SFTTrainer(model=model, args=sft_config(cfg, tmp_path), processing_class=tokenizer,
                         train_dataset=Dataset.from_list([to_prompt_completion(r) for r in EXAMPLES[:4]]),
                         peft_config=LoraConfig(r=4, target_modules=["q_proj"], task_type="CAUSAL_LM"))
    for row, record in zip(trainer.train_dataset, EXAMPLES[:4]):
        ids, start = trained_tokens(tokenizer, record["messages"][:-1], record["messages"][-1:])
        assert row["input_ids"] == ids
        assert [i for i, label in enumerate(row["labels"]) if label != -100] == list(range(start, len(ids)))
        assert tokenizer.decode(ids[-2:]) == "<|im_end|>\n"


@pytest.mark.parametrize("template, says", [
    (DROPS_END_OF_TURN, "ends the assistant's turn without an end-of-turn token: the last trained token of training "
                        "example 1 is"),
    (END_OF_TURN_WITH_THE_NEXT_MESSAGE, "ends the assistant's turn without an end-of-turn token"),
    (NO_SYSTEM_ROLE, "fails to render training example 1 (roles system, user, assistant): TemplateError: System role "
                     "not supported"),
])
def test_a_broken_template_is_refused_before_anything_is_written(embedded_model, tmp_path, capsys, template, says):
    path = tmp_path / "broken.jinja"
    path.write_text(template)
    line = _refused(capsys, _train(tmp_path / "run", "--train.chat_template", path))
    assert says in line and f"fix {path} or name another (--train.chat_template chatml)" in line, line
    if template != NO_SYSTEM_ROLE:
        assert "not a special token, so the model would never learn to stop" in line
    assert not (tmp_path / "run").exists()


def test_a_base_model_without_a_template_trains_with_a_named_one(embedded_model, tmp_path, capsys):
    src, plain = models.local_dir(embedded_model), tmp_path / "plain-lm"
    plain.mkdir()
    for f in src.iterdir():  # the same checkpoint without its chat template; the weights linked, not copied
        if f.name not in ("chat_template.jinja", "tokenizer_config.json"):
            (plain / f.name).symlink_to(f)
    tok_cfg = json.loads((src / "tokenizer_config.json").read_text())
    tok_cfg.pop("chat_template", None)
    (plain / "tokenizer_config.json").write_text(json.dumps(tok_cfg))
    line = _refused(capsys, _train(tmp_path / "refused", "--model", plain))
    assert "has no chat template" in line and "--train.chat_template chatml" in line
    line = _refused(capsys, _train(tmp_path / "refused", "--model", plain, "--train.chat_template", "chatm"))
    assert "unknown chat template 'chatm': did you mean 'chatml'?" in line
    assert not (tmp_path / "refused").exists()

    run = tmp_path / "run"
    argv = _train(run, "--model", plain, "--train.chat_template", "chatml", "--train.epochs", "1",
                  "--train.stop_check", "2", "--eval.max_new_tokens", "16")
    assert main([str(a) for a in argv]) == 0
    out = capsys.readouterr().out
    assert "chat template (chatml): 8 of 8 training examples end their trained tokens with the end-of-turn" in out
    assert "stop check (after training): " in out
    assert (run / "adapter" / "chat_template.jinja").read_text() == template_text("chatml")
    report = json.loads((run / "chat_template_check.json").read_text())
    assert report["before_training"]["chat_template"] == "chatml"
    assert report["after_training"]["prompts"] == 2 and report["after_training"]["max_new_tokens"] == 16
    record = completion.read(run)
    assert record["inputs"]["train"]["chat_template"] == "chatml" and "chat_template_sha256" in record["inputs"]
    assert "adapter/chat_template.jinja" in record["outputs"]
    merged = merge(run, tmp_path / "merged")  # formats as the training did, and is checked
    assert AutoTokenizer.from_pretrained(merged).chat_template == template_text("chatml")
    manifest = json.loads((merged / "ftscale-merged.json").read_text())
    assert manifest["stop_check"]["where"] == "after merging" and manifest["stop_check"]["max_new_tokens"] == 16
    # evaluated as it was trained: the adapter carries its template to the in-process backend
    hf = make_backend("hf", model=str(plain), adapter=str(run / "adapter"), batch_size=2, progress=False)
    assert hf.tokenizer.chat_template == template_text("chatml")
    got = hf.generate([Request("q", [{"role": "user", "content": "Say hi."}])], Sampling(max_new_tokens=4))
    assert got[0].error is None and got[0].output_tokens > 0
    # and by a vLLM server ftscale starts: it is handed the adapter's template, or the named one for the base
    served = VLLMServer(str(plain), {"ft": run}, log_path=tmp_path / "vllm" / "server.log")
    assert served.args[served.args.index("--chat-template") + 1] == str(run / "adapter" / "chat_template.jinja")
    cfg = load_config(MAIN_CONFIG, {"model": str(plain), "train.chat_template": "chatml"})
    base = server_for(cfg, None, tmp_path / "vllm-base" / "server.log")
    assert Path(base.args[base.args.index("--chat-template") + 1]).read_text() == template_text("chatml")
    assert "--chat-template" not in server_for(load_config(MAIN_CONFIG), None, tmp_path / "plain" / "server.log").args


def test_a_named_template_is_a_training_input_and_no_template_changes_nothing():
    plain, chatml = load_config(MAIN_CONFIG), load_config(MAIN_CONFIG, {"train.chat_template": "chatml"})
    assert "chat_template" not in plain.cell_yaml(25) and "chat_template" not in json.dumps(train_inputs(plain, 25))
    assert "stop_check" not in plain.cell_yaml(25) and "stop_check" not in json.dumps(train_inputs(plain, 25))
    inputs = train_inputs(chatml, 25)
    assert inputs["train"]["chat_template"] == "chatml" and len(inputs["chat_template_sha256"]) == 64
    assert completion.digest(inputs) != completion.digest(train_inputs(plain, 25))
    with pytest.raises(ConfigError, match=r"train.chat_template: .*nope.jinja: file not found"):
        load_config(MAIN_CONFIG, {"train.chat_template": "nope.jinja"})


def test_the_stop_check_measures_the_rate_and_names_a_broken_generation_config(embedded_path):
    tokenizer = AutoTokenizer.from_pretrained(embedded_path)
    model = AutoModelForCausalLM.from_pretrained(embedded_path, dtype=torch.float32)
    prompts = stop_check.eval_prompts(None, 4)  # short questions: the instruct model answers and stops
    result = stop_check.check_model(model, tokenizer, prompts, 32, "base")
    assert (result["prompts"], result["stopped"], result["stop_rate"], result["warning"]) == (4, 4, 1.0, None)
    model.generation_config.eos_token_id = tokenizer.convert_tokens_to_ids("<|endoftext|>")  # not end-of-turn
    broken = stop_check.check_model(model, tokenizer, prompts, 32, "broken")
    assert (broken["stopped"], broken["emitted"], broken["stop_rate"]) == (0, 4, 0.0)
    assert broken["warning"] == ("4 of 4 answers emitted '<|im_end|>' and ran on: the generation config's eos_token_id "
                                 "[0] does not include the end-of-turn '<|im_end|>' (2): generate() will not stop at the "
                                 "end of the turn; add 2 to eos_token_id in generation_config.json")


def test_the_check_after_training_is_recorded_in_the_cell(trained_run, embedded_path):
    """The stop rate recorded after training is the one greedy generation gives, recounted here with
    transformers' own generate(), one prompt at a time; and docs/training.md's promise holds: every answer
    ends its turn (rate 1, no warning), or below 1 the check warns, naming how many answers ran to
    max_new_tokens and how many emitted end-of-turn without stopping."""
    report = json.loads((trained_run / "chat_template_check.json").read_text())
    assert report["before_training"]["end_of_turn"] == "<|im_end|>" and report["before_training"]["warnings"] == []
    after = report["after_training"]
    assert after["prompts"] == 8 and after["max_new_tokens"] == 96
    assert after["stop_rate"] == after["stopped"] / 8
    assert "chat_template_check.json" not in completion.read(trained_run)["outputs"]

    tokenizer = AutoTokenizer.from_pretrained(embedded_path)
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(embedded_path, dtype=torch.float32),
                                      trained_run / "adapter").eval()
    eot = tokenizer.convert_tokens_to_ids("<|im_end|>")
    stopped = 0
    for record in read_jsonl(ROOT / load_config(MAIN_CONFIG).data.eval, "eval")[:8]:  # the check's prompts
        prompt = tokenizer.apply_chat_template(record["messages"], add_generation_prompt=True, return_tensors="pt",
                                               return_dict=True)
        with torch.inference_mode():
            out = model.generate(**prompt, max_new_tokens=96, do_sample=False, eos_token_id=eot, pad_token_id=eot)
        stopped += eot in out[0, prompt["input_ids"].shape[1]:].tolist()
    assert after["stopped"] == stopped, (after, stopped)
    if stopped == 8:
        assert after["warning"] is None
    else:
        assert after["ran_on"] + after["emitted"] + after["other"] == 8 - stopped
        for count, says in ((after["ran_on"], "ran to max_new_tokens (96) without '<|im_end|>'"),
                            (after["emitted"], "emitted '<|im_end|>' and ran on")):
            assert (f"{count} of 8 answers {says}" in after["warning"]) == (count > 0), after["warning"]


class _Replies(BaseHTTPRequestHandler):
    """A chat-completions server answering by the prompt: stop, or run to the length limit with or
    without the end-of-turn text on the way."""

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        kind = body["messages"][-1]["content"]
        content, reason = {"stops": ("4", "stop"), "runs past": ("4<|im_end|>\nand more", "length"),
                           "rambles": ("and so on", "length")}[kind]
        reply = {"id": "x", "object": "chat.completion", "created": 0, "model": body["model"],
                 "choices": [{"index": 0, "finish_reason": reason, "message": {"role": "assistant", "content": content}}]}
        data = json.dumps(reply).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


def test_the_served_stop_check_tells_a_server_that_runs_on_from_a_model_that_does():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Replies)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        prompts = [[{"role": "user", "content": k}] for k in ("stops", "stops", "runs past", "rambles")]
        results = stop_check.check_served(f"http://127.0.0.1:{server.server_port}/v1", "EMPTY", ["base", "ft"], prompts,
                                          32, "<|im_end|>")
    finally:
        server.shutdown()
    assert [r["where"] for r in results] == ["served as base", "served as ft"]
    for r in results:
        assert (r["stopped"], r["emitted"], r["ran_on"], r["stop_rate"]) == (2, 1, 1, 0.5)
        assert "1 of 4 answers emitted '<|im_end|>' and ran on: the server does not stop on '<|im_end|>'" in r["warning"]
        assert "1 of 4 answers ran to max_new_tokens (32)" in r["warning"]

"""The training-data formats people already have (alpaca, sharegpt, prompt/completion): each converted to
chat JSONL once, a conversation kept whole, errors naming the source's `file:line`, and everything
downstream (training, its inputs hash) reading the converted file."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import yaml
from datasets import Dataset

from ftscale import completion
from ftscale.chatdata import read_jsonl, sha256_file
from ftscale.cli import main
from ftscale.config import load_config, write_task_data
from ftscale.data.formats import CONVERTERS, convert_file
from ftscale.errors import ConfigError, DataError
from ftscale.eval.tasks.yaml_task import task_from_file
from ftscale.stepinputs import train_inputs

from conftest import MAIN_CONFIG, ROOT

FORMATTING = ROOT / "data" / "formatting"


def _chat(*turns) -> dict:
    return {"messages": [{"role": r, "content": c} for r, c in turns]}


GOOD = {
    "openai_chat": [(_chat(("user", "Hi"), ("assistant", "Hello")), _chat(("user", "Hi"), ("assistant", "Hello")))],
    "alpaca": [
        ({"instruction": "Add 2 and 3.", "input": "", "output": "5"}, _chat(("user", "Add 2 and 3."), ("assistant", "5"))),
        ({"instruction": "Translate to French.", "input": "cat", "output": "chat", "system": "Be brief."},
         _chat(("system", "Be brief."), ("user", "Translate to French.\n\ncat"), ("assistant", "chat"))),
        ({"instruction": "Say hi.", "output": "hi", "text": "ignored"}, _chat(("user", "Say hi."), ("assistant", "hi"))),
    ],
    "sharegpt": [  # every turn kept, in order: the loss goes on the last assistant turn
        ({"conversations": [{"from": "system", "value": "Be kind."}, {"from": "human", "value": "Hi"},
                            {"from": "gpt", "value": "Hello"}, {"from": "user", "value": "And?"},
                            {"from": "chatgpt", "value": "More"}, {"from": "human", "value": "Bye"},
                            {"from": "assistant", "value": "Bye!"}]},
         _chat(("system", "Be kind."), ("user", "Hi"), ("assistant", "Hello"), ("user", "And?"), ("assistant", "More"),
               ("user", "Bye"), ("assistant", "Bye!"))),
        ({"system": "Terse.", "conversations": [{"from": "human", "value": "Q"}, {"from": "gpt", "value": "A"}]},
         _chat(("system", "Terse."), ("user", "Q"), ("assistant", "A"))),
    ],
    "prompt_completion": [
        ({"prompt": "The sky is", "completion": "blue."}, _chat(("user", "The sky is"), ("assistant", "blue."))),
        ({"prompt": [{"role": "system", "content": "S"}, {"role": "user", "content": "Q1"},
                     {"role": "assistant", "content": "A1"}, {"role": "user", "content": "Q2"}],
          "completion": [{"role": "assistant", "content": "A2"}]},
         _chat(("system", "S"), ("user", "Q1"), ("assistant", "A1"), ("user", "Q2"), ("assistant", "A2"))),
    ],
}


@pytest.mark.parametrize("fmt", sorted(GOOD))
def test_each_format_converts_to_chat_whole_conversations_kept(fmt, tmp_path):
    for record, chat in GOOD[fmt]:
        assert CONVERTERS[fmt](record) == chat
    src = tmp_path / f"{fmt}.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r, _ in GOOD[fmt]))
    out = convert_file(src, fmt, tmp_path / "out" / "train.jsonl")
    assert read_jsonl(out, "train") == [chat for _, chat in GOOD[fmt]]


ALPACA_OK = {"instruction": "i", "output": "o"}
SHAREGPT_OK = {"conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": "a"}]}
PC_OK = {"prompt": "p", "completion": "c"}


@pytest.mark.parametrize("fmt, line, reason", [
    ("alpaca", {"input": "x", "output": "o"}, "alpaca: missing field 'instruction'"),
    ("alpaca", {"instruction": "i"}, "alpaca: missing field 'output'"),
    ("alpaca", {"instruction": "i", "output": 5}, "alpaca: field 'output' must be a string (got a number)"),
    ("alpaca", {"instruction": "  ", "output": "o"}, "alpaca: field 'instruction' is empty"),
    ("alpaca", {"instruction": "i", "input": ["x"], "output": "o"}, "alpaca: field 'input' must be a string (got a list)"),
    ("sharegpt", {"messages": []}, "sharegpt: missing field 'conversations'"),
    ("sharegpt", {"conversations": []}, "sharegpt: field 'conversations' must be a non-empty list of turns"),
    ("sharegpt", {"conversations": [{"from": "human", "value": "q"}, {"from": "bot", "value": "a"}]},
     "sharegpt: conversations[1].from: unknown role 'bot' (sharegpt roles: human, user, gpt, assistant, chatgpt, system)"),
    ("sharegpt", {"conversations": [{"from": "human", "value": "q"}, {"from": "function_call", "value": "{}"},
                                    {"from": "gpt", "value": "a"}]},
     "sharegpt: conversations[1].from: 'function_call' is a tool/function turn, which is not supported "
     "(only system, user and assistant turns are trained)"),
    ("sharegpt", {"conversations": [{"from": "human", "value": "q"}, {"from": "tool", "value": "x"}]},
     "sharegpt: conversations[1].from: 'tool' is a tool/function turn, which is not supported "
     "(only system, user and assistant turns are trained)"),
    ("sharegpt", {"conversations": [{"value": "q"}]}, "sharegpt: conversations[0]: missing field 'from'"),
    ("sharegpt", {"conversations": [{"from": "human", "value": "q"}, {"from": "gpt"}]},
     "sharegpt: conversations[1]: missing field 'value'"),
    ("sharegpt", {"conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": ""}]},
     "sharegpt: conversations[1]: field 'value' is empty"),
    ("sharegpt", {"conversations": [{"from": "gpt", "value": "a"}, {"from": "human", "value": "q"}]},
     "sharegpt: conversations[1]: the last turn must be the assistant's answer (from gpt), not from 'human'"),
    ("sharegpt", {"conversations": ["hi"]}, "sharegpt: conversations[0]: a turn must be an object with 'from' and 'value'"),
    ("prompt_completion", {"completion": "c"}, "prompt_completion: missing field 'prompt'"),
    ("prompt_completion", {"prompt": "p"}, "prompt_completion: missing field 'completion'"),
    ("prompt_completion", {"prompt": "p", "completion": [{"role": "user", "content": "c"}]},
     "prompt_completion: field 'completion' must be one assistant message (got user): the loss is on the final "
     "assistant turn"),
    ("prompt_completion", {"prompt": [{"role": "tool", "content": "x"}], "completion": "c"},
     "prompt_completion: prompt[0].role: 'tool' is a tool/function turn, which is not supported "
     "(only system, user and assistant turns are trained)"),
    ("prompt_completion", {"prompt": [{"role": "human", "content": "x"}], "completion": "c"},
     "prompt_completion: prompt[0].role: unknown role 'human' (expected one of system, user, assistant)"),
    ("prompt_completion", {"prompt": [], "completion": "c"}, "prompt_completion: field 'prompt' is an empty list"),
    ("openai_chat", {"messages": [{"role": "user", "content": "q"}]},
     "the last message must be the assistant's answer (found 'user')"),
    ("alpaca", "[1, 2]", "expected a JSON object"),
    ("alpaca", "{not json", "not valid JSON (Expecting property name enclosed in double quotes at column 2)"),
    ("alpaca", "", "empty line"),
])
def test_a_bad_record_is_refused_naming_file_line_and_reason(fmt, line, reason, tmp_path):
    good = {"alpaca": ALPACA_OK, "sharegpt": SHAREGPT_OK, "prompt_completion": PC_OK,
            "openai_chat": _chat(("user", "q"), ("assistant", "a"))}[fmt]
    src = tmp_path / "src.jsonl"
    src.write_text(json.dumps(good) + "\n" + (line if isinstance(line, str) else json.dumps(line)) + "\n")
    with pytest.raises(DataError) as e:
        convert_file(src, fmt, tmp_path / "out.jsonl")
    assert str(e.value) == f"{src}:2: {reason}"
    assert not (tmp_path / "out.jsonl").exists()


def _alpaca_from_formatting(path: Path, n: int, start: int = 0) -> Path:
    """The first formatting examples as alpaca records (system, instruction, output)."""
    rows = []
    for rec in read_jsonl(FORMATTING / "train.jsonl", "train")[start:start + n]:
        system, user, answer = (m["content"] for m in rec["messages"])
        rows.append({"system": system, "instruction": user, "input": "", "output": answer})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _experiment(tmp_path, **data) -> Path:
    cfg = yaml.safe_load(MAIN_CONFIG.read_text())
    cfg["data"].update(data)
    cfg["output_dir"] = str(tmp_path / "runs")
    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_an_unknown_format_is_refused_naming_the_key(tmp_path):
    src = _alpaca_from_formatting(tmp_path / "alpaca.jsonl", 4)
    with pytest.raises(ConfigError, match=r"data\.format.*'openai_chat', 'alpaca', 'sharegpt' or 'prompt_completion'"):
        load_config(_experiment(tmp_path, train=str(src), format="alpacca"))
    with pytest.raises(ConfigError, match=r"data\.format: alpaca is the format of the data\.train the config names, "
                                          r"and it names none"):
        load_config(_experiment(tmp_path, train=None, format="alpaca"))
    task = yaml.safe_load((ROOT / "configs" / "tasks" / "formatting.yaml").read_text())
    task["data"] = {"train": str(src), "eval": str(FORMATTING / "eval.jsonl"), "format": "share_gpt"}
    (tmp_path / "task.yaml").write_text(yaml.safe_dump(task))
    with pytest.raises(ConfigError, match=r"task\.yaml:\d+: data\.format: .*'sharegpt'"):
        task_from_file(tmp_path / "task.yaml")


def test_converted_once_rewritten_when_the_source_changes_and_hashed_as_converted(tmp_path):
    src = _alpaca_from_formatting(tmp_path / "alpaca.jsonl", 30)
    cfg = load_config(_experiment(tmp_path, train=str(src), format="alpaca"))
    out = cfg.data.train
    assert out.parent == tmp_path / "runs" / "task-data" / "alpaca" and not out.exists()  # loading names it only
    assert "format" not in yaml.safe_load(cfg.to_yaml())["data"]  # the config reads chat JSONL now
    write_task_data(cfg)
    pool = read_jsonl(out, "train")
    assert len(pool) == 30 and pool[0] == read_jsonl(FORMATTING / "train.jsonl", "train")[0]
    before = train_inputs(cfg, 10)
    assert before["data_sha256"] == sha256_file(out)
    stamp = out.stat().st_mtime_ns
    os.utime(out, ns=(stamp - 10**9, stamp - 10**9))  # a rewrite would move it forward again
    again = load_config(_experiment(tmp_path, train=str(src), format="alpaca"))
    write_task_data(again)
    assert again.data.train == out and out.stat().st_mtime_ns == stamp - 10**9  # not written again
    assert train_inputs(again, 10) == before

    _alpaca_from_formatting(src, 30, start=1)  # the source changed: converted again, another hash
    changed = load_config(_experiment(tmp_path, train=str(src), format="alpaca"))
    write_task_data(changed)
    assert read_jsonl(out, "train")[0] == read_jsonl(FORMATTING / "train.jsonl", "train")[1]
    assert train_inputs(changed, 10)["data_sha256"] == sha256_file(out) != before["data_sha256"]


def test_a_task_names_its_training_pool_in_another_format(tmp_path):
    src = tmp_path / "pool.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r, _ in GOOD["sharegpt"]))
    task = yaml.safe_load((ROOT / "configs" / "tasks" / "formatting.yaml").read_text())
    task["data"] = {"train": str(src), "eval": str(FORMATTING / "eval.jsonl"), "format": "sharegpt"}
    (tmp_path / "task.yaml").write_text(yaml.safe_dump(task))
    data = task_from_file(tmp_path / "task.yaml").data
    path = data.file("train", tmp_path / "td")
    assert path == tmp_path / "td" / task["name"] / "train.jsonl" and not path.exists()
    assert data.file("eval", tmp_path / "td") == FORMATTING / "eval.jsonl"  # the eval set stays as it is
    assert read_jsonl(data.write("train", tmp_path / "td"), "train") == [chat for _, chat in GOOD["sharegpt"]]


def test_a_dataset_in_another_format_is_read_row_by_row(tmp_path):
    rows = [{"system": None} | r for r, _ in GOOD["sharegpt"]]  # a dataset's absent value is null
    Dataset.from_list(rows).to_parquet(tmp_path / "train.parquet")
    task = yaml.safe_load((ROOT / "configs" / "tasks" / "formatting.yaml").read_text())
    hub = {"path": "parquet", "data_files": str(tmp_path / "train.parquet"), "split": "train"}
    task["data"] = {"train": hub, "eval": str(FORMATTING / "eval.jsonl"), "format": "sharegpt"}
    (tmp_path / "task.yaml").write_text(yaml.safe_dump(task))
    written = task_from_file(tmp_path / "task.yaml").data.write("train", tmp_path / "td")
    assert [r["messages"] for r in read_jsonl(written, "train")] == [c["messages"] for _, c in GOOD["sharegpt"]]
    rows[1]["conversations"][1]["from"] = "bot"  # a bad row: named by its number
    Dataset.from_list(rows).to_parquet(tmp_path / "train.parquet")
    with pytest.raises(DataError) as e:
        task_from_file(tmp_path / "task.yaml").data.write("train", tmp_path / "td2")
    assert str(e.value) == (f"{tmp_path / 'task.yaml'}: data.train: row 2: sharegpt: conversations[1].from: unknown role "
                            "'bot' (sharegpt roles: human, user, gpt, assistant, chatgpt, system)")

    task["data"]["train"] = hub | {"columns": {"user": "x", "assistant": "y"}}
    (tmp_path / "task.yaml").write_text(yaml.safe_dump(task))
    with pytest.raises(ConfigError, match=r"task\.yaml:\d+: data\.format: a sharegpt dataset is read row by row as it "
                                          r"is: drop data\.train\.columns"):
        task_from_file(tmp_path / "task.yaml")
    task["data"] = {"train": str(FORMATTING / "train.jsonl"), "eval": hub}
    (tmp_path / "task.yaml").write_text(yaml.safe_dump(task))
    with pytest.raises(ConfigError, match=r"data\.eval\.columns: required: an eval dataset is mapped by its columns"):
        task_from_file(tmp_path / "task.yaml")


def test_a_converted_alpaca_file_trains_end_to_end(embedded_model, tmp_path, capsys):
    src = _alpaca_from_formatting(tmp_path / "alpaca.jsonl", 4)
    exp = _experiment(tmp_path, train=str(src), format="alpaca")
    code = main(["train", "--config", str(exp), "--num_train_examples", "2", "--train.epochs", "1",
                 "--train.batch_size", "2", "--train.stop_check", "0"])
    assert code == 0, capsys.readouterr().err[-3000:]
    cell = next((tmp_path / "runs" / "formatting-smollm2-cpu").glob("n*2-seed42"))
    record = completion.read(cell)
    converted = next((tmp_path / "runs" / "task-data" / "alpaca").glob("alpaca-*.jsonl"))
    assert record["inputs"]["data_sha256"] == sha256_file(converted)
    assert yaml.safe_load((cell / "config.yaml").read_text())["data"]["train"] == str(converted)
    assert (cell / "adapter" / "adapter_model.safetensors").is_file()

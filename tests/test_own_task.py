"""A task written only in YAML: every evaluator on real generations of the embedded model through
`ftscale run`, the refusals of `task check` and `run`, and datasets loaded through `datasets`."""

from __future__ import annotations

import json
import re
import subprocess

import pytest
import yaml
from jsonschema import Draft202012Validator

from ftscale.chatdata import read_jsonl
from ftscale.errors import ConfigError
from ftscale.eval.evaluate import rescore
from ftscale.eval.evaluators import DEFAULT_REFUSAL_MARKERS
from ftscale.eval.tasks import get_task
from ftscale.eval.tasks.check import check_task

from conftest import BIN, ROOT

ORDERS = ROOT / "data" / "orders"
SCHEMA = ROOT / "configs" / "schemas" / "orders.schema.json"
JUDGE_RUBRIC = ("Rate how well this reply extracts the order from the message, from 1 (useless) to 10 "
                "(perfect JSON).\nMessage: {input}\nReply: {output}\nAnswer with one line: Score: <1-10>")


def _write_task(tmp_path, evaluators, eval_path=None, train_path=None, extra=None):
    spec = {"name": "orders-test", "data": {"train": str(train_path or ORDERS / "train.jsonl"),
                                            "eval": str(eval_path or ORDERS / "eval.jsonl")},
            "prompt_variants": {"default": {}, "few_shot": {"few_shot": 2}},
            "sampling": {"temperature": 0.0, "max_new_tokens": 48}, "evaluators": evaluators, **(extra or {})}
    path = tmp_path / "task.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


ALL_EVALUATORS = [
    {"type": "json_schema", "name": "valid_json", "schema_path": str(SCHEMA)},
    {"type": "json_fields", "name": "field", "fields": ["customer", "quantity", "city"]},
    {"type": "exact_match", "name": "customer_text", "field": "answer"},
    {"type": "regex", "name": "city_quoted", "pattern": r'"city"\s*:\s*"(?P<city>[^"]*)"', "mode": "search"},
    {"type": "choice", "name": "shipping", "labels": ["express", "standard"], "field": "label"},
    {"type": "llm_judge", "name": "judge", "judge": "hf:smollm2-135m", "rubric": JUDGE_RUBRIC, "max_new_tokens": 12},
    {"type": "length", "name": "words"},
    {"type": "refusal", "name": "refused"},
]


def _eval_subset(tmp_path, n=5):
    """The first eval orders, with the reference fields the evaluators above need; the last lacks `city`."""
    records = read_jsonl(ORDERS / "eval.jsonl", "eval")[:n]
    for r in records:
        f = r["reference"]["fields"]
        r["reference"] |= {"answer": f["customer"], "city": f["city"], "label": r["reference"]["express"]}
    del records[-1]["reference"]["city"]
    path = tmp_path / "eval.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def test_a_yaml_task_runs_with_every_evaluator_on_real_generations(embedded_model, tmp_path):
    task_path = _write_task(tmp_path, ALL_EVALUATORS, eval_path=_eval_subset(tmp_path))
    assert check_task(task_path, tmp_path / "task-data").ok
    exp = {"name": "own", "task": str(task_path), "model": embedded_model, "num_train_examples": [0, 8],
           "train": {"epochs": 1, "batch_size": 8}, "eval": {"batch_size": 8}, "output_dir": str(tmp_path / "runs")}
    (tmp_path / "exp.yaml").write_text(yaml.safe_dump(exp))
    proc = subprocess.run([str(BIN / "ftscale"), "run", str(tmp_path / "exp.yaml")], cwd=ROOT, capture_output=True,
                          text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    exp_dir = tmp_path / "runs" / "own"
    task = get_task(str(task_path))
    validator = Draft202012Validator(json.loads(SCHEMA.read_text()))
    for cell in ("n0000-seed42", "n0008-seed42"):
        gens = [json.loads(line) for line in open(exp_dir / cell / "eval-default" / "generations.jsonl")]
        scores = json.loads((exp_dir / cell / "eval-default" / "scores.json").read_text())
        assert len(gens) == 5 and scores["failed"] == 0
        for g in gens:  # each evaluator's verdict, recomputed here from the text alone
            s, out, ref = g["scores"], g["output"], g["reference"]
            try:
                obj = json.loads(out.strip())
            except json.JSONDecodeError:
                obj = None
            assert s["valid_json"] == float(isinstance(obj, dict) and validator.is_valid(obj))
            assert s["words"] == len(out.split())
            assert s["refused"] == float(any(m in out.lower().replace("\u2019", "'") for m in DEFAULT_REFUSAL_MARKERS))
            named = [label for label in ("express", "standard") if re.search(rf"\b{label}\b", out, re.IGNORECASE)]
            assert s["shipping.predicted"] == (named[0] if len(named) == 1 else None)
            assert s["shipping"] == float(s["shipping.predicted"] == ref["label"])
            assert s["customer_text"] == float(out.strip().casefold() == ref["answer"].casefold())
            if "city" not in ref:
                assert s["city_quoted"] is None  # not scorable, not wrong
            if isinstance(obj, dict) and obj.get("quantity") == ref["fields"]["quantity"]:
                assert s["field.quantity"] == 1.0
            judged = g["judgements"]["judge"]  # the judge model's real reply, kept for rescoring
            assert isinstance(judged, str)
            assert (s["judge.unparsable"] == 1.0) == (s["judge"] is None)
            assert s["judge"] is None or 0.0 <= s["judge"] <= 1.0
        assert scores["not_scorable"]["city_quoted"] == 1
        assert set(scores["confusion_matrix"]["shipping"]) == {"express", "standard"}
        assert rescore(exp_dir / cell / "eval-default" / "generations.jsonl", task) == scores
    summary = (exp_dir / "summary.md").read_text()
    header = next(line for line in summary.splitlines() if line.startswith("| train examples"))
    assert all(f" {m.name} |" in header for m in task.metrics)  # the task's own metrics, by name
    assert "lower is better for judge.unparsable, words, refused" in summary
    assert "Not scorable" in summary and "city_quoted 1" in summary


def _check_error(task_path, tmp_path) -> str:
    with pytest.raises(ConfigError) as e:
        check_task(task_path, tmp_path / "task-data")
    return str(e.value)


def test_task_check_refuses_bad_tasks_naming_file_line_and_key(tmp_path):
    path = _write_task(tmp_path, [{"type": "json_schema", "schema_path": str(SCHEMA)}, {"type": "bleu"}])
    line = path.read_text().splitlines().index("- type: bleu") + 1
    assert f"{path}:{line}: evaluators[1].type: unknown evaluator 'bleu'" in _check_error(path, tmp_path)

    path = _write_task(tmp_path, [{"type": "length", "unit": 3}])
    assert "evaluators[0] (length): unit" in _check_error(path, tmp_path)

    path = _write_task(tmp_path, [{"type": "json_schema", "schema": {"type": "objekt"}}])
    assert "evaluators[0] (json_schema): schema" in _check_error(path, tmp_path)

    hub = {"path": "parquet", "data_files": str(tmp_path / "x.parquet"), "columns": {"usr": "text"}}
    path = _write_task(tmp_path, [{"type": "length"}], extra={"data": {"train": str(ORDERS / "train.jsonl"), "eval": hub}})
    assert "data.eval.columns" in _check_error(path, tmp_path)


def test_overlap_and_missing_reference_fields(tmp_path):
    train = read_jsonl(ORDERS / "train.jsonl", "train")
    evals = read_jsonl(ORDERS / "eval.jsonl", "eval")[:20]
    leaked = {"id": "leak", "messages": [m | ({"content": "  " + m["content"].upper() + " "} if m["role"] == "user" else {})
                                        for m in train[3]["messages"][:-1]], "reference": {"fields": {}}}
    eval_path = tmp_path / "eval.jsonl"
    eval_path.write_text("".join(json.dumps(r) + "\n" for r in [*evals, leaked]))
    path = _write_task(tmp_path, [{"type": "exact_match", "field": "answer"}], eval_path=eval_path)
    report = check_task(path, tmp_path / "task-data")
    assert not report.ok
    assert f"{eval_path}:21: eval example 'leak' is in the training pool up to whitespace and case" in report.format()
    assert "needs reference field 'answer', which no eval example has" in report.format()
    # `ftscale run` refuses the overlap too, before training anything (with an evaluator these references
    # satisfy: a missing reference field is refused even earlier, when the config loads)
    path = _write_task(tmp_path, [{"type": "length"}], eval_path=eval_path)
    exp = {"name": "leaky", "task": str(path), "model": "smollm2-135m", "num_train_examples": [0],
           "output_dir": str(tmp_path / "runs")}
    (tmp_path / "exp.yaml").write_text(yaml.safe_dump(exp))
    proc = subprocess.run([str(BIN / "ftscale"), "run", str(tmp_path / "exp.yaml")], cwd=ROOT, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 2 and "the eval set overlaps the training pool (1 examples)" in proc.stderr
    assert not (tmp_path / "runs" / "leaky" / "n0000-seed42").exists()

    evals[0]["reference"]["fields"].pop("city")  # one example lacks a field: a warning, scored as not scorable
    eval_path.write_text("".join(json.dumps(r) + "\n" for r in evals))
    path = _write_task(tmp_path, [{"type": "json_fields", "fields": ["city"]}, {"type": "exact_match", "field": "express"}],
                       eval_path=eval_path)
    report = check_task(path, tmp_path / "task-data")
    assert report.ok and "1 eval examples lack reference field" not in report.format()  # json_fields needs `fields`
    task = get_task(str(path))
    assert task.score(evals[0], '{"city": "Lyon"}')["json_fields.city"] is None


def test_datasets_from_disk_and_parquet_load_through_the_same_path(tmp_path):
    from datasets import Dataset, DatasetDict

    train = read_jsonl(ORDERS / "train.jsonl", "train")[:40]
    evals = read_jsonl(ORDERS / "eval.jsonl", "eval")[:10]
    rows = lambda recs, answer: {  # noqa: E731
        "text": [r["messages"][1]["content"] for r in recs],
        "order": [r["messages"][2]["content"] for r in recs] if answer else [json.dumps(r["reference"]["fields"]) for r in recs],
        "uid": [f"u{i}" for i in range(len(recs))], "cust": [json.loads(r["messages"][2]["content"] if answer else
                                                                     json.dumps(r["reference"]["fields"]))["customer"] for r in recs]}
    Dataset.from_dict(rows(train, True)).to_parquet(tmp_path / "train.parquet")
    DatasetDict({"test": Dataset.from_dict(rows(evals, False))}).save_to_disk(tmp_path / "ds")
    system = "Extract the order as JSON."
    data = {"train": {"path": "parquet", "data_files": str(tmp_path / "train.parquet"), "split": "train",
                      "system_prompt": system, "columns": {"user": "text", "assistant": "order"}},
            "eval": {"path": str(tmp_path / "ds"), "split": "test", "system_prompt": system,
                     "columns": {"user": "text", "id": "uid", "reference": {"answer": "cust"}}}}
    path = _write_task(tmp_path, [{"type": "exact_match", "field": "answer"}], extra={"data": data})
    report = check_task(path, tmp_path / "task-data")
    assert report.ok, report.format()
    written = read_jsonl(tmp_path / "task-data" / "orders-test" / "eval.jsonl", "eval")
    assert [r["id"] for r in written] == [f"u{i}" for i in range(10)]
    assert written[0]["messages"] == [{"role": "system", "content": system}, {"role": "user", "content": evals[0]["messages"][1]["content"]}]
    assert written[0]["reference"] == {"answer": evals[0]["reference"]["fields"]["customer"]}
    assert len(read_jsonl(tmp_path / "task-data" / "orders-test" / "train.jsonl", "train")) == 40

    data["eval"]["columns"]["user"] = "question"  # a mapping naming a missing column
    path = _write_task(tmp_path, [{"type": "exact_match", "field": "answer"}], extra={"data": data})
    with pytest.raises(ConfigError, match=r"data.eval.columns.user: column 'question' is not in the dataset \(it has text, order, uid, cust\)"):
        check_task(path, tmp_path / "task-data")
    report = check_task(_write_task(tmp_path, [{"type": "length"}], eval_path=tmp_path / "missing.jsonl"), tmp_path / "td")
    assert not report.ok and f"{tmp_path / 'missing.jsonl'}: file not found" in report.format()


def test_the_formatting_task_in_yaml_form_agrees_with_the_built_in():
    builtin, from_yaml = get_task("formatting"), get_task(str(ROOT / "configs" / "tasks" / "formatting-yaml.yaml"))
    example = read_jsonl(ROOT / "data" / "formatting" / "eval.jsonl", "eval")[1]  # answer 42
    outputs = ['{"answer": 42, "explanation": "9 x 8 - 30."}', '{"answer": 41, "explanation": "x"}',
               'Sure! {"answer": 42, "explanation": "x"}', '{"answer": "42", "explanation": ""}', "42", "{}"]
    for out in outputs:
        a, b = builtin.score(example, out), from_yaml.score(example, out)
        assert a["format_ok"] == b["valid_json"], out
        assert a["answer_correct"] == b["answer.answer"], out

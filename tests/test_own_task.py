"""A task written only in YAML: every evaluator on real generations of the embedded model through
`ftscale run`, the refusals of `task check` and `run`, and datasets loaded through `datasets`."""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
from pathlib import Path

import pytest
import yaml
from jsonschema import Draft202012Validator

from ftscale.chatdata import read_jsonl
from ftscale.config import load_config
from ftscale.errors import ConfigError, DataError
from ftscale.eval.diagnostic_evaluators import DEFAULT_REFUSAL_MARKERS
from ftscale.eval.evaluate import rescore
from ftscale.eval.tasks import get_task
from ftscale.eval.tasks.check import check_task
from ftscale.experiment import task_for

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


SYSTEM = "Extract the order as JSON."


def _dataset_sources(tmp_path) -> dict:
    """The first 40 training orders as a parquet file, the first 10 eval orders saved to disk: a task's
    `data` section naming them as datasets."""
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
    return {"train": {"path": "parquet", "data_files": str(tmp_path / "train.parquet"), "split": "train",
                      "system_prompt": SYSTEM, "columns": {"user": "text", "assistant": "order"}},
            "eval": {"path": str(tmp_path / "ds"), "split": "test", "system_prompt": SYSTEM,
                     "columns": {"user": "text", "id": "uid", "reference": {"answer": "cust"}}}}


def test_datasets_from_disk_and_parquet_load_through_the_same_path(tmp_path):
    data, system = _dataset_sources(tmp_path), SYSTEM
    evals = read_jsonl(ORDERS / "eval.jsonl", "eval")[:10]
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


def test_the_formatting_task_is_its_yaml_file_scored_by_its_rules():
    path = ROOT / "configs" / "tasks" / "formatting.yaml"
    task = get_task("formatting")
    assert task.file_sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert [m.name for m in task.metrics] == ["format_ok", "answer_correct", "both"]
    assert task.reference_needs == (("answer_correct", "answer", True),)  # refused before generation if absent
    example = read_jsonl(ROOT / "data" / "formatting" / "eval.jsonl", "eval")[1]
    assert example["reference"]["answer"] == 42
    outputs = {'{"answer": 42, "explanation": "9 x 8 - 30."}': (1, 1, 1), '{"answer": 41, "explanation": "x"}': (1, 0, 0),
               'Sure! {"answer": 42, "explanation": "x"}': (0, 1, 0), '{"answer": "42", "explanation": ""}': (0, 1, 0),
               '{"answer": 42.04, "explanation": "within 0.1%"}': (1, 1, 1), "42": (0, 0, 0), "{}": (0, 0, 0)}
    for out, expected in outputs.items():
        s = task.score(example, out)
        assert (s["format_ok"], s["answer_correct"], s["both"]) == expected, out


def test_a_dataset_is_written_by_the_run_that_needs_it_not_by_loading_the_config(tmp_path):
    path = _write_task(tmp_path, [{"type": "exact_match", "field": "answer"}], extra={"data": _dataset_sources(tmp_path)})
    exp = {"name": "hub", "task": str(path), "model": "smollm2-135m", "num_train_examples": [0, 8],
           "output_dir": str(tmp_path / "runs")}
    (tmp_path / "exp.yaml").write_text(yaml.safe_dump(exp))
    cfg = load_config(tmp_path / "exp.yaml")
    written = tmp_path / "runs" / "task-data" / "orders-test"
    assert (cfg.data.train, cfg.data.eval) == (written / "train.jsonl", written / "eval.jsonl")
    assert not (tmp_path / "runs").exists()  # loading the config named the files and wrote nothing
    assert task_for(cfg).name == "orders-test"
    assert len(read_jsonl(cfg.data.train, "train")) == 40 and len(read_jsonl(cfg.data.eval, "eval")) == 10
    stamp = cfg.data.eval.stat().st_mtime_ns
    task_for(cfg)  # the same task object: written once
    assert cfg.data.eval.stat().st_mtime_ns == stamp


def _orders_with_answers(tmp_path, lacking: int) -> Path:
    """The first 6 eval orders with the customer as `answer`, the first `lacking` of them without it."""
    records = read_jsonl(ORDERS / "eval.jsonl", "eval")[:6]
    for i, r in enumerate(records):
        if i >= lacking:
            r["reference"]["answer"] = r["reference"]["fields"]["customer"]
    path = tmp_path / "eval-answers.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def test_an_evaluator_needing_a_field_in_every_example_refuses_one_lacking_it(tmp_path):
    path = _write_task(tmp_path, [{"type": "reference_answer"}], eval_path=_orders_with_answers(tmp_path, 1))
    report = check_task(path, tmp_path / "task-data")
    assert not report.ok
    assert "evaluator 'reference_answer' needs reference field 'answer' in every eval example; 1 lack it (order-0000)" \
        in report.format()
    exp = {"name": "x", "task": str(path), "model": "smollm2-135m", "num_train_examples": [0],
           "output_dir": str(tmp_path / "runs")}
    (tmp_path / "exp.yaml").write_text(yaml.safe_dump(exp))
    with pytest.raises(DataError, match="reference lacks 'answer' needed by evaluator 'reference_answer'"):
        load_config(tmp_path / "exp.yaml")  # before any generation
    path = _write_task(tmp_path, [{"type": "reference_answer"}], eval_path=_orders_with_answers(tmp_path, 0))
    assert check_task(path, tmp_path / "task-data").ok


def test_all_of_descriptions_and_the_experiments_few_shot_count(tmp_path):
    evaluators = [{"type": "json_schema", "name": "valid_json", "schema_path": str(SCHEMA), "description": "an order"},
                  {"type": "json_fields", "name": "field", "fields": ["customer", "city"]}, {"type": "length", "name": "words"}]
    variants = {"default": {}, "few_shot": {"few_shot": "eval.few_shot_k"}, "two": {"few_shot": 2}}
    path = _write_task(tmp_path, evaluators, extra={"all_of": {"usable": ["valid_json", "field.city"]},
                                                    "prompt_variants": variants, "headline": ["usable"]})
    task = get_task(str(path))
    described = {m.name: m.description for m in task.metrics}
    assert described["valid_json"] == "an order" and described["usable"] == "valid_json and field.city"
    assert task.headline == ("usable",) and task.metrics[-1].name == "usable"
    example = read_jsonl(ORDERS / "eval.jsonl", "eval")[0]
    fields = dict(example["reference"]["fields"])
    assert task.score(example, json.dumps(fields))["usable"] == 1.0
    assert task.score(example, json.dumps(fields | {"city": "Lyon"}))["usable"] == 0.0
    assert task.score(example, "{" + json.dumps(fields))["usable"] == 0.0  # not one JSON object
    del example["reference"]["fields"]["city"]
    assert task.score(example, json.dumps(fields))["usable"] is None  # field.city not scorable: nor is usable
    pool = read_jsonl(ORDERS / "train.jsonl", "train")
    for variant, k, shots in (("few_shot", 5, 5), ("few_shot", 1, 1), ("two", 5, 2), ("default", 5, 0)):
        messages = task.build_messages(example, variant, pool, k, 0)
        assert len(messages) == len(example["messages"]) + 2 * shots, (variant, k)


@pytest.mark.parametrize("all_of, message", [
    ({"words": ["valid_json", "field.city"]}, "'words' is a metric of the evaluators already"),
    ({"usable": ["valid_json"]}, "name at least two metrics to combine"),
    ({"usable": ["valid_json", "judge"]}, "['judge'] are not metrics of the evaluators (a judge's metrics cannot be "
                                          "combined"),
    ({"usable": ["valid_json", "field.town"]}, "['field.town'] are not metrics of the evaluators"),
])
def test_all_of_refused_naming_file_line_and_key(tmp_path, all_of, message):
    evaluators = [{"type": "json_schema", "name": "valid_json", "schema_path": str(SCHEMA)},
                  {"type": "json_fields", "name": "field", "fields": ["city"]}, {"type": "length", "name": "words"},
                  next(e for e in ALL_EVALUATORS if e["type"] == "llm_judge")]
    path = _write_task(tmp_path, evaluators, extra={"all_of": all_of})
    name = next(iter(all_of))
    line = path.read_text().splitlines().index(f"  {name}:") + 1
    assert f"{path}:{line}: all_of.{name}: {message}" in _check_error(path, tmp_path)

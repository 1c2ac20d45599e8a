"""Migration off OpenAI fine-tuning: inventory and shutdown dates, capture (resumed, deleted
training file, refused organisation, retired model), the captured backend. The real `openai`
client talks to the stand-in HTTP server in tests/openai_standin.py."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import pytest

from ftscale.cli import main as cli
from ftscale.deprecations import load_deprecations
from ftscale.errors import ConfigError, FtscaleError

from openai_standin import StandIn

KEY = "sk-test-migrate-0123456789"
TODAY = dt.date(2026, 11, 29)


def chat_lines(n: int, start: int = 0) -> bytes:
    lines = [{"messages": [{"role": "system", "content": "Reply with JSON."},
                           {"role": "user", "content": f"Question number {i}: how long is this?"},
                           {"role": "assistant", "content": json.dumps({"answer": i})}]} for i in range(start, start + n)]
    return "".join(json.dumps(x) + "\n" for x in lines).encode()


@pytest.fixture()
def standin(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    with StandIn(key=KEY) as s:  # refuses a request without the key, as OpenAI does
        yield s


def paired(standin) -> dict:
    """The stand-in's URL with the key paired to it (ftscale/apikey.py: another endpoint gets a key only so)."""
    return {"base_url": standin.base_url, "api_key_env": "OPENAI_API_KEY"}


def flags(standin) -> list[str]:
    return ["--base-url", standin.base_url, "--api-key-env", "OPENAI_API_KEY"]


def fast_backend(standin, model):
    """The capture's own backend kind, with quick retries so the failure tests take a second."""
    from ftscale.eval.backends import make_backend

    return make_backend("openai", model=model, **paired(standin), max_retries=1,
                        backoff_s=0.01, progress=False)


# --- inventory and shutdown dates ------------------------------------------------------------------

def test_inventory_lists_every_page_with_shutdown_dates(standin, capsys):
    from ftscale.openai_org import client, inventory

    _, nano = standin.add_fine_tune("gpt-4.1-nano-2025-04-14", chat_lines(10), suffix="a", created_at=1_750_000_000)
    _, mini = standin.add_fine_tune("gpt-4o-mini-2024-07-18", chat_lines(10), suffix="b", created_at=1_750_100_000)
    _, told = standin.add_fine_tune("gpt-4.1-2025-04-14", chat_lines(10), suffix="c", created_at=1_750_200_000,
                                    shutdown="2026-12-31")
    standin.models["ft:gpt-4o-2024-08-06:org-standin:orphan:zz"] = {
        "id": "ft:gpt-4o-2024-08-06:org-standin:orphan:zz", "object": "model", "created": 1_700_000_000,
        "owned_by": "org-standin"}
    rows = inventory(client(standin.base_url, "OPENAI_API_KEY"), load_deprecations(), TODAY)
    by_model = {r["model"]: r for r in rows}
    assert len(rows) == 4  # three jobs over two pages (page size 2) and one model without a listed job
    assert by_model[nano]["stops_answering"] == "2026-10-23 (passed 37 days ago)"
    assert by_model[mini]["stops_answering"] == "2027-01-14 (in 46 days)"
    assert by_model[mini]["training_file"] and by_model[mini]["trained_tokens"] == 12345
    assert by_model[told]["stops_answering"].startswith("2026-12-31")  # the API's own date wins
    assert by_model[told]["date_source"] == "the API's models list"
    assert by_model["ft:gpt-4o-2024-08-06:org-standin:orphan:zz"]["stops_answering"].startswith("2027-01-14")

    assert cli(["openai", "inventory", *flags(standin)]) == 0
    out = capsys.readouterr().out
    assert mini in out and "no new job after 2027-01-06" in out and "checked 2026-11-29" in out


def test_deprecation_table_is_validated(tmp_path):
    table = load_deprecations()
    assert table.shutdown("ft:gpt-4o-mini-2024-07-18:acme::x")[1] == dt.date(2027, 1, 14)
    assert table.shutdown("gpt-4.1-nano")[1] == dt.date(2026, 10, 23)
    assert table.shutdown("ft:gpt-3.5-turbo:acme::x") is None
    bad = tmp_path / "dep.yaml"
    text = Path("configs/openai_deprecations.yaml").read_text().replace('shutdown: "2026-10-23"', 'shutdown: "soon"')
    bad.write_text(text)
    with pytest.raises(ConfigError, match=r"dep.yaml:\d+: .*shutdown"):
        load_deprecations(bad)


def test_inventory_of_a_refused_organisation_is_one_line(standin, capsys):
    standin.refuse_org = True
    assert cli(["openai", "inventory", *flags(standin)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "refused" in err and "what is still possible" in err


# --- capture -----------------------------------------------------------------------------------------

def test_capture_resumes_counts_failures_and_never_stores_them(standin, tmp_path):
    from ftscale.migrate import CACHE, CAPTURED, capture

    _, model = standin.add_fine_tune("gpt-4o-mini-2024-07-18", chat_lines(30), suffix="acme")
    out = tmp_path / "acme"
    # two requests fail twice each (first try and its one retry): counted, not stored
    standin.chat_faults = ["500", "500", "500", "500"]
    first = capture(model, out, **paired(standin), eval_size=6, batch_size=2, concurrency=1, progress=False,
                    backend=fast_backend(standin, model), log=lambda *_: None)
    assert first["n_eval"] == 6 and first["answered"] == 4 and first["failed"] == 2
    cached = [json.loads(line) for line in (out / CACHE).read_text().splitlines()]
    assert len(cached) == 4 and all(r["reply"] for r in cached)
    assert len((out / CAPTURED).read_text().splitlines()) == 4
    # the held-out eval set is not in the local training data
    assert len((out / "train.jsonl").read_text().splitlines()) == 24
    # a run killed while writing leaves a torn last line: cut off, that answer asked again
    with open(out / CACHE, "a") as f:
        f.write('{"key": "torn')
    asked_before = len(standin.chat_requests)
    second = capture(model, out, **paired(standin), batch_size=2, concurrency=1, progress=False,
                     backend=fast_backend(standin, model), log=lambda *_: None)
    assert second["answered"] == 6 and second["failed"] == 0
    assert len(standin.chat_requests) - asked_before == 2  # only the two that failed
    captured = [json.loads(line) for line in (out / CAPTURED).read_text().splitlines()]
    assert {r["id"] for r in captured} == {e["id"] for e in map(json.loads, (out / "eval.jsonl").read_text().splitlines())}
    first_rec = captured[0]
    q = first_rec["prompt"][-1]["content"]
    assert json.loads(first_rec["output"])["answer"] == len(q)  # the stand-in's answer to that very prompt
    assert first_rec["output_tokens"] > 0 and first_rec["latency_s"] > 0 and first_rec["ttft_s"] is not None
    eval_rec = json.loads((out / "eval.jsonl").read_text().splitlines()[0])
    assert eval_rec["reference"]["captured"] == first_rec["output"] and "gold" in eval_rec["reference"]
    # the key went to the stand-in and nowhere on disk
    assert f"Bearer {KEY}" in standin.auth_headers
    assert not any(KEY in p.read_text(errors="ignore") for p in out.rglob("*") if p.is_file())


def test_capture_uses_the_validation_file_and_cli_exit_codes(standin, tmp_path):
    _, model = standin.add_fine_tune("gpt-4.1-mini-2025-04-14", chat_lines(12), validation=chat_lines(3, 100))
    out = tmp_path / "m"
    assert cli(["migrate", "capture", model, "--out", str(out), *flags(standin)]) == 0
    manifest = json.loads((out / "capture.json").read_text())
    assert manifest["data"]["eval_source"].endswith("(validation)") and manifest["answered"] == 3
    assert len((out / "train.jsonl").read_text().splitlines()) == 12  # nothing held out


def test_capture_of_a_deleted_training_file_says_what_is_possible(standin, tmp_path):
    from ftscale.migrate import capture
    from ftscale.openai_org import client

    jid, model = standin.add_fine_tune("gpt-4o-mini-2024-07-18", chat_lines(20))
    client(standin.base_url, "OPENAI_API_KEY").files.delete(standin.jobs[jid]["training_file"])
    with pytest.raises(FtscaleError, match=r"was deleted at OpenAI: give the training data with --train FILE"):
        capture(model, tmp_path / "x", **paired(standin), progress=False, log=lambda *_: None)
    # with the user's own copy of the data, the capture goes on
    mine = tmp_path / "mine.jsonl"
    mine.write_bytes(chat_lines(20))
    m = capture(model, tmp_path / "x", **paired(standin), train=mine, eval_size=4, progress=False,
                log=lambda *_: None)
    assert m["answered"] == 4 and m["data"]["train_source"] == str(mine)


def test_capture_refused_organisation_and_not_a_fine_tune(standin, tmp_path, capsys):
    _, model = standin.add_fine_tune("gpt-4o-mini-2024-07-18", chat_lines(20))
    standin.refuse_org = True
    assert cli(["migrate", "capture", model, "--out", str(tmp_path / "r"), *flags(standin)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "refused" in err and "--eval PROMPTS.jsonl --train TRAIN.jsonl" in err
    # what is still possible works: the user's data and prompts, the model still serving
    data, prompts = tmp_path / "train.jsonl", tmp_path / "prompts.jsonl"
    data.write_bytes(chat_lines(10))
    prompts.write_text("".join(json.dumps({"messages": [{"role": "user", "content": f"q {i}"}]}) + "\n" for i in range(3)))
    assert cli(["migrate", "capture", model, "--out", str(tmp_path / "r"), *flags(standin),
                "--train", str(data), "--eval", str(prompts)]) == 0
    assert cli(["migrate", "capture", "gpt-4o-mini", "--out", str(tmp_path / "n")]) == 2
    assert "is not a fine-tuned model" in capsys.readouterr().err


def test_capture_of_a_model_past_its_shutdown(standin, tmp_path):
    from ftscale.migrate import CAPTURED, capture

    _, model = standin.add_fine_tune("gpt-4.1-nano-2025-04-14", chat_lines(20), shutdown="2026-10-23")
    standin.today = "2026-10-22"
    out = tmp_path / "nano"
    m = capture(model, out, **paired(standin), eval_size=4, batch_size=2, progress=False,
                backend=fast_backend(standin, model), log=lambda *_: None)
    assert m["answered"] == 4
    (out / "capture.json").unlink()  # start over: ask again after the shutdown day
    (out / CAPTURED).unlink()
    (out / "capture" / "answers.cache.jsonl").unlink()
    standin.today = "2026-10-24"
    with pytest.raises(FtscaleError, match=r"no longer answers .*404.*does not exist.*2026-10-23 \(passed \d+ days ago.*"
                                           r"no answer was captured.*train.jsonl"):
        capture(model, out, **paired(standin), eval_size=4, progress=False,
                backend=fast_backend(standin, model), log=lambda *_: None)
    assert (out / "train.jsonl").is_file()  # the data is kept


# --- the captured backend ------------------------------------------------------------------------------

def test_captured_backend_replays_by_id_and_refuses_other_prompts(tmp_path):
    from ftscale.eval.backends import Request, Sampling, make_backend

    path = tmp_path / "captured.jsonl"
    prompt = [{"role": "user", "content": "hi"}]
    path.write_text(json.dumps({"id": "a", "prompt": prompt, "output": "hello", "model": "ft:gpt-4o-mini:x::y",
                                "input_tokens": 5, "output_tokens": 2, "ttft_s": 0.3, "latency_s": 0.9,
                                "finish_reason": "stop", "date": "2026-11-29T00:00:00+00:00"}) + "\n")
    b = make_backend("captured", path=path)
    assert b.model == "ft:gpt-4o-mini:x::y" and b.name == "openai-captured"
    got = b.generate([Request("a", prompt), Request("b", prompt), Request("a", [{"role": "user", "content": "other"}])],
                     Sampling())
    assert (got[0].text, got[0].input_tokens, got[0].output_tokens, got[0].ttft_s, got[0].latency_s) == \
        ("hello", 5, 2, 0.3, 0.9)
    assert got[1].error and "not captured" in got[1].error and got[1].text == ""
    assert got[2].error and "prompt differs" in got[2].error


# --- the plan, and the captured reference cell of its sweep -------------------------------------------

def test_plan_writes_a_checked_sweep_and_its_reference_cell_replays_the_capture(standin, tmp_path, monkeypatch):
    import yaml

    from ftscale.migrate import capture
    from ftscale.migrate_plan import plan
    from ftscale.sweep import Runner

    _, model = standin.add_fine_tune("gpt-4o-mini-2024-07-18", chat_lines(40))
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "migrations" / "acme"
    capture(model, out, **paired(standin), eval_size=5, progress=False, log=lambda *_: None)
    with pytest.raises(FtscaleError, match="more than the 35 captured training examples"):
        plan(out, ["smollm2-135m"], sizes="0,64")
    text = plan(out, ["smollm2-135m"], margin=0.05, monthly_requests=5000, overrides=["train.epochs=1"])
    assert f"ftscale sweep {out / 'sweep.yaml'} && ftscale report {out}" in text
    sweep = yaml.safe_load((out / "sweep.yaml").read_text())
    assert sweep["num_train_examples"] == [0, 8, 17, 35] and sweep["epochs"] == [1]
    assert sweep["references"][0]["backend"] == "captured" and sweep["output_dir"] == str(out.parent)
    task = yaml.safe_load((out / "task.yaml").read_text())
    assert [e["type"] for e in task["evaluators"]] == ["agreement_exact", "agreement_json"]  # the answers are JSON
    marker = json.loads((out / "migration.json").read_text())
    assert marker["headline"] == "agree_json.all" and marker["margin"] == 0.05 and marker["monthly_requests"] == 5000
    # the reference cell: no training, the recorded answers scored by the agreement evaluators
    runner = Runner(out / "sweep.yaml", log=lambda *_: None)
    ref = next(c for c in runner.cells if c.kind == "reference")
    runner.run_cell(ref)
    scores = json.loads(next(ref.run_dir.glob("eval-*/scores.json")).read_text())
    assert scores["backend"] == "openai-captured" and scores["model"] == model and scores["failed"] == 0
    assert scores["metrics"] == {"agree_exact": 1.0, "agree_json": 1.0, "agree_json.all": 1.0}
    assert not (ref.run_dir / "adapter").exists()
    # QLoRA systems, and the agreement judge asked in both orders
    plan(out, ["smollm2-135m"], judge="hf:smollm2-135m", qlora=True)
    sweep = yaml.safe_load((out / "sweep.yaml").read_text())
    assert sweep["systems"][0]["quantization"] == "4bit" and sweep["systems"][0]["name"] == "smollm2-135m QLoRA"
    judges = [e for e in yaml.safe_load((out / "task.yaml").read_text())["evaluators"] if e["type"] == "agreement_judge"]
    assert [e["order"] for e in judges] == ["local_first", "captured_first"]


def test_plan_refuses_a_folder_without_a_capture(tmp_path, capsys):
    assert cli(["migrate", "plan", str(tmp_path), "--model", "smollm2-135m"]) == 2
    assert "no capture here" in capsys.readouterr().err


def test_plan_with_a_task_keeps_its_evaluators_and_gold_references(standin, tmp_path):
    import yaml

    from ftscale.eval.tasks import get_task
    from ftscale.migrate import capture
    from ftscale.migrate_plan import plan

    _, model = standin.add_fine_tune("gpt-4o-mini-2024-07-18", chat_lines(20))
    prompts = tmp_path / "orders-eval.jsonl"
    prompts.write_text("".join(Path("data/orders/eval.jsonl").read_text().splitlines(keepends=True)[:3]))
    out = tmp_path / "orders-ft"
    capture(model, out, **paired(standin), eval_file=prompts, progress=False, log=lambda *_: None)
    ev = json.loads((out / "eval.jsonl").read_text().splitlines()[0])
    assert set(ev["reference"]) >= {"fields", "captured"}  # the task's gold and the fine-tune's answer
    plan(out, ["smollm2-135m"], task="orders", sizes="0,8")
    task = get_task(str(out / "task.yaml"))
    names = [m.name for m in task.metrics]
    assert "valid_json" in names and "field.all" in names and "agree_exact" in names
    assert json.loads((out / "migration.json").read_text())["headline"] == "valid_json"
    assert yaml.safe_load((out / "sweep.yaml").read_text())["num_train_examples"] == [0, 8]


def test_the_standin_forwards_a_fine_tune_to_the_server_playing_it(standin, tmp_path):
    """The walk-through's set-up, with a second stand-in in vLLM's place: the fine-tune's chat
    requests are streamed through, under the name the upstream server knows."""
    from ftscale.migrate import capture

    with StandIn() as upstream:
        upstream.answer = lambda req: f"upstream answer to: {req['messages'][-1]['content']}"
        _, model = standin.add_fine_tune("gpt-4o-mini-2024-07-18", chat_lines(20), forward=(upstream.base_url, "ft"))
        m = capture(model, tmp_path / "f", **paired(standin), eval_size=3, progress=False, log=lambda *_: None)
        assert m["answered"] == 3 and [r["model"] for r in upstream.chat_requests] == ["ft"] * 3
    captured = [json.loads(line) for line in (tmp_path / "f" / "captured.jsonl").read_text().splitlines()]
    assert all(r["output"] == f"upstream answer to: {r['prompt'][-1]['content']}" for r in captured)
    assert all(r["output_tokens"] > 0 and r["ttft_s"] is not None for r in captured)


# --- capture from traffic: stored completions and a request log ------------------------------------------

def _conversation(i: int) -> list[dict]:
    return [{"role": "system", "content": "Reply with JSON."}, {"role": "user", "content": f"Question number {i}: how long is this?"}]


def test_capture_from_stored_completions_pages_filters_and_resumes(standin, tmp_path):
    from ftscale.migrate import CAPTURED, capture
    from ftscale.migrate_traffic import STORED_CACHE

    _, model = standin.add_fine_tune("gpt-4o-mini-2024-07-18", chat_lines(30))
    for i in range(5):  # five distinct prompts over several pages (each also a prompt of the training file)
        standin.add_stored(model, _conversation(i), json.dumps({"answer": i}), metadata={"app": "shop"})
    standin.add_stored(model, _conversation(0), json.dumps({"answer": 0}), metadata={"app": "shop"})  # repeated
    standin.add_stored(model, _conversation(7), "cut off", metadata={"app": "shop"}, finish_reason="length")
    standin.add_stored(model, _conversation(8), None, metadata={"app": "shop"}, finish_reason="tool_calls")  # no text
    standin.add_stored(model, _conversation(9), "other app", metadata={"app": "crm"})
    standin.add_stored("ft:gpt-4o-mini-2024-07-18:other::x", _conversation(10), "other model", metadata={"app": "shop"})
    out = tmp_path / "stored"
    m = capture(model, out, source="stored", metadata={"app": "shop"}, **paired(standin), progress=False,
                log=lambda *_: None)
    assert m["source"] == "stored" and m["answered"] == m["n_eval"] == 6  # 0-4, and 7 (cut off, flagged)
    assert m["traffic"] == {"requests": 8, "duplicates": 1, "no_answer": 1, "cut_off": 1, "temperatures": []}
    assert m["product_temperature"] is None  # stored completions do not say: the user states it
    captured = {r["id"]: r for r in map(json.loads, (out / CAPTURED).read_text().splitlines())}
    assert sum(r["cut_off"] for r in captured.values()) == 1
    assert all(r["prompt"] == _conversation(i) for i, r in zip([0, 1, 2, 3, 4, 7], captured.values()))
    # the training examples whose prompt is an eval item are not the local models' to train on
    train = [json.loads(line) for line in (out / "train.jsonl").read_text().splitlines()]
    assert len(train) == 30 - 6 and not any(t["messages"][:-1] == _conversation(0) for t in train)
    assert any("left out of the local models' training data" in n for n in m["data"]["notes"])
    # resumed: only what was not fetched before is fetched again
    standin.add_stored(model, _conversation(11), json.dumps({"answer": 11}), metadata={"app": "shop"})
    fetched = len((out / STORED_CACHE).read_text().splitlines())
    m = capture(model, out, source="stored", metadata={"app": "shop"}, **paired(standin), progress=False,
                log=lambda *_: None)
    assert m["answered"] == 7 and len((out / STORED_CACHE).read_text().splitlines()) == fetched + 1


def test_capture_from_a_request_log(standin, tmp_path):
    from ftscale.migrate import capture

    _, model = standin.add_fine_tune("gpt-4o-mini-2024-07-18", chat_lines(30))
    log_file = tmp_path / "requests.jsonl"
    log_file.write_text("".join(json.dumps({"messages": _conversation(i) + [{"role": "assistant", "content": f"a{i}"}],
                                            "temperature": 0.7}) + "\n" for i in range(100, 104)))
    m = capture(model, tmp_path / "log", source=str(log_file), **paired(standin), progress=False, log=lambda *_: None)
    assert m["answered"] == 4 and m["product_temperature"] == 0.7 and m["data"]["n_train"] == 30
    with pytest.raises(FtscaleError, match="goes with --from ask"):
        capture(model, tmp_path / "x", source=str(log_file), eval_file=log_file, **paired(standin), progress=False)
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"messages": [{"role": "user", "content": "no answer"}]}) + "\n")
    with pytest.raises(FtscaleError, match=r"bad.jsonl:1: .*assistant"):
        capture(model, tmp_path / "y", source=str(bad), **paired(standin), progress=False, log=lambda *_: None)

"""Bad input through the real command line: one line saying what to fix, exit code 2, nothing written.

Each case runs `ftscale.cli.main` (the `ftscale` entry point) in-process, except where the shell
itself matters (no terminal on stdin); the OpenAI cases talk to the stand-in HTTP server, the
hub cases to a local HTTP server answering the way the Hugging Face hub does.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from ftscale.cli import main

from conftest import BIN, MAIN_CONFIG, ROOT
from openai_standin import StandIn

KEY = "sk-ftscale-TEST-bad-input"


def refused(capsys, argv: list[str]) -> str:
    """Run the CLI; it must exit 2 with one `error:` line and no traceback. Returns that line."""
    code = main([str(a) for a in argv])
    err = capsys.readouterr().err
    assert code == 2, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err, err
    return lines[0]


def nothing_in(path) -> bool:
    return not path.exists() or not any(path.rglob("*"))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --- train --backend openai -----------------------------------------------------------------------

@pytest.fixture
def standin(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    with StandIn() as s:
        yield s


def _openai_train(tmp_path, base_url: str, *extra) -> list:
    return ["train", "--backend", "openai", "--config", MAIN_CONFIG, "--openai.base_url", base_url,
            "--output_dir", tmp_path / "out", "--num_train_examples", "12", *extra]


@pytest.mark.parametrize("fault,says", [
    ((401, "invalid_api_key"), "refused the API key (401): set OPENAI_API_KEY"),
    ((429, "insufficient_quota"), "no quota left (429 insufficient_quota)"),
    ((403, "model_not_available"), "the API key may not do this (403"),
])
def test_openai_train_refused_by_the_service(standin, tmp_path, capsys, fault, says):
    standin.refuse_all = fault
    line = refused(capsys, _openai_train(tmp_path, standin.base_url, "--yes"))
    assert says in line and KEY not in line
    assert nothing_in(tmp_path / "out") and not standin.files and not standin.jobs


def test_openai_train_without_network(standin, tmp_path, capsys):
    url = f"http://127.0.0.1:{_free_port()}/v1"  # nothing listens there
    line = refused(capsys, _openai_train(tmp_path, url, "--yes"))
    assert f"cannot reach {url}" in line and "check the network" in line
    assert nothing_in(tmp_path / "out")


def test_openai_train_without_yes_and_no_terminal(standin, tmp_path):
    proc = subprocess.run([str(BIN / "ftscale"), *map(str, _openai_train(tmp_path, standin.base_url))], cwd=ROOT,
                          stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and "EOFError" not in proc.stderr, proc.stderr
    assert proc.stderr.strip() == "error: no terminal to confirm the job on: pass --yes to start it without asking"
    assert nothing_in(tmp_path / "out") and not standin.files


# --- the model: hub ids, chat template, LoRA target modules -----------------------------------------

class _Hub(BaseHTTPRequestHandler):
    """Answers like huggingface.co: an unknown repo, a gated one."""

    def log_message(self, *args):
        pass

    def do_HEAD(self):
        code, status = ("GatedRepo", 403) if "/gated/" in self.path else ("RepoNotFound", 404)
        self.send_response(status)
        self.send_header("X-Error-Code", code)
        self.send_header("X-Error-Message", "stand-in hub")
        self.send_header("Content-Length", "0")
        self.end_headers()

    do_GET = do_HEAD


def point_hub_at(monkeypatch, constants, url: str) -> None:
    """What HF_ENDPOINT=url does when set before huggingface_hub is imported."""
    monkeypatch.setattr(constants, "ENDPOINT", url)
    monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE", url + "/{repo_id}/resolve/{revision}/{filename}")


@pytest.fixture
def hub(monkeypatch, tmp_path):
    from huggingface_hub import constants

    server = ThreadingHTTPServer(("127.0.0.1", 0), _Hub)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    point_hub_at(monkeypatch, constants, f"http://127.0.0.1:{server.server_address[1]}")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub-cache"))  # nothing cached
    yield constants
    server.shutdown()
    server.server_close()


def _train(tmp_path, *extra) -> list:
    return ["train", "--config", MAIN_CONFIG, "--num_train_examples", "8", "--output_dir", tmp_path / "run", *extra]


@pytest.mark.parametrize("model,says", [
    ("nobody/no-such-model", "no such model on the Hugging Face hub (check the spelling"),
    ("gated/llama", "is gated on the Hugging Face hub: accept its terms at https://huggingface.co/gated/llama"),
])
def test_train_with_a_hub_id_the_hub_refuses(hub, tmp_path, capsys, model, says):
    assert says in refused(capsys, _train(tmp_path, "--model", model))
    assert nothing_in(tmp_path / "run")


def test_train_with_a_hub_id_offline_or_unreachable(hub, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(hub, "HF_HUB_OFFLINE", True)
    line = refused(capsys, _train(tmp_path, "--model", "HuggingFaceTB/SmolLM2-1.7B-Instruct"))
    assert "the Hugging Face hub cannot be reached (HF_HUB_OFFLINE is set)" in line and "not in the local cache" in line
    monkeypatch.setattr(hub, "HF_HUB_OFFLINE", False)
    point_hub_at(monkeypatch, hub, f"http://127.0.0.1:{_free_port()}")  # nothing listens there
    line = refused(capsys, _train(tmp_path, "--model", "HuggingFaceTB/SmolLM2-1.7B-Instruct"))
    assert "the Hugging Face hub cannot be reached (ConnectError" in line
    assert nothing_in(tmp_path / "run")


def test_train_with_a_base_model_without_chat_template(embedded_model, tmp_path, capsys):
    from ftscale import models

    src, plain = models.local_dir(embedded_model), tmp_path / "plain-lm"
    plain.mkdir()
    for f in src.iterdir():  # the same checkpoint, its chat template removed; the weights linked, not copied
        (plain / f.name).symlink_to(f)
    (plain / "tokenizer_config.json").unlink()
    tok_cfg = json.loads((src / "tokenizer_config.json").read_text())
    tok_cfg.pop("chat_template", None)
    (plain / "tokenizer_config.json").write_text(json.dumps(tok_cfg))
    if (plain / "chat_template.jinja").exists():
        (plain / "chat_template.jinja").unlink()
    line = refused(capsys, _train(tmp_path, "--model", plain))
    assert "has no chat template" in line and "pick a chat/instruct model" in line
    assert nothing_in(tmp_path / "run")


def test_train_with_a_mistyped_scheduler_or_target_module(embedded_model, tmp_path, capsys):
    line = refused(capsys, _train(tmp_path, "--train.lr_scheduler", "cosin"))
    assert "--train.lr_scheduler (command line): train.lr_scheduler: unknown scheduler 'cosin'" in line
    assert "did you mean 'cosine'" in line
    line = refused(capsys, _train(tmp_path, "--train.lora.target_modules", "[q_proj, v_prj]"))
    assert "train.lora.target_modules: 'v_prj' not in 'smollm2-135m'" in line and "v_proj" in line
    line = refused(capsys, _train(tmp_path, "--train.lora.target_modules", "attn\\.(q|v)_prj"))
    assert "matches no module" in line
    assert nothing_in(tmp_path / "run")


# --- data files ------------------------------------------------------------------------------------

def test_training_file_that_is_not_utf8(tmp_path, capsys):
    bad = tmp_path / "train.jsonl"
    good = (ROOT / "data/formatting/train.jsonl").read_bytes().splitlines(keepends=True)[:30]
    good[6] = good[6].replace(b"the", "th\u00e9".encode("latin-1"), 1)  # a Latin-1 byte in line 7
    bad.write_bytes(b"".join(good))
    line = refused(capsys, _train(tmp_path, "--data.train", bad))
    assert f"{bad}:7: not UTF-8 text (byte 0xe9 at column" in line
    assert nothing_in(tmp_path / "run")
    assert main(["data", "check", str(bad)]) == 1  # data check lists it among the bad lines and goes on
    out = capsys.readouterr().out
    assert f"{bad}:7: not UTF-8 text (byte 0xe9" in out and "29 examples, 1 errors" in out


def test_eval_file_missing_the_reference_field(tmp_path, capsys):
    evals = [json.loads(line) for line in (ROOT / "data/formatting/eval.jsonl").read_text().splitlines()[:10]]
    del evals[3]["reference"]["answer"]
    bad = tmp_path / "eval.jsonl"
    bad.write_text("".join(json.dumps(e) + "\n" for e in evals))
    line = refused(capsys, ["eval", "--config", MAIN_CONFIG, "--data.eval", bad, "--output-dir", tmp_path / "out"])
    assert line == f"error: {bad}:4: reference lacks 'answer' needed by evaluator 'answer_correct'"
    assert nothing_in(tmp_path / "out")


def test_own_task_eval_file_where_no_example_has_a_needed_field(tmp_path, capsys):
    evals = [json.loads(line) for line in (ROOT / "data/orders/eval.jsonl").read_text().splitlines()[:6]]
    for e in evals:
        e["reference"].pop("fields", None)
    bad = tmp_path / "eval.jsonl"
    bad.write_text("".join(json.dumps(e) + "\n" for e in evals))
    cfg = tmp_path / "orders.yaml"
    cfg.write_text(MAIN_CONFIG.read_text().replace("task: formatting", "task: orders")
                   .replace("data/formatting/", "data/orders/").replace("baseline_variants: [few_shot]", "baseline_variants: []"))
    line = refused(capsys, ["eval", "--config", cfg, "--data.eval", bad, "--output-dir", tmp_path / "out"])
    assert f"{bad}:1: reference lacks 'fields' needed by evaluator" in line and "(and 5 more examples)" in line
    assert nothing_in(tmp_path / "out")


# --- report, bench ---------------------------------------------------------------------------------

def test_report_of_an_experiment_with_nothing_evaluated(tmp_path, capsys):
    exp = tmp_path / "exp"
    (exp / "n0000-seed42").mkdir(parents=True)
    shutil.copy(MAIN_CONFIG, exp / "experiment.yaml")
    shutil.copy(MAIN_CONFIG, exp / "n0000-seed42" / "config.yaml")
    before = sorted(exp.rglob("*"))
    line = refused(capsys, ["report", exp])
    assert "nothing has been evaluated yet" in line and "ftscale run CONFIG" in line and "ftscale eval" in line
    assert sorted(exp.rglob("*")) == before


@pytest.mark.parametrize("argv,says", [
    (["latency", "--adapter", "x", "--concurrency", "1,x"], "argument --concurrency: 'x' is not a positive integer in '1,x'"),
    (["latency", "--adapter", "x", "--concurrency", "0"], "argument --concurrency: '0' is not a positive integer"),
    (["throughput", "--concurrency", "0"], "argument --concurrency: '0' is not a positive integer"),
    (["crosscheck", "--concurrency", "-2"], "argument --concurrency: '-2' is not a positive integer"),
])
def test_bench_concurrency_must_be_positive_integers(tmp_path, capsys, argv, says):
    with pytest.raises(SystemExit) as e:
        main(["bench", *argv, "--config", str(MAIN_CONFIG), "--output-dir", str(tmp_path / "out")])
    assert e.value.code == 2 and says in capsys.readouterr().err
    assert nothing_in(tmp_path / "out")


def test_throughput_scores_any_task_by_its_headline_metrics():
    """`bench throughput` on a task without format_ok: the orders task's own headline metrics."""
    from ftscale.chatdata import read_jsonl
    from ftscale.eval.tasks import get_task
    from ftscale.serve.throughput import headline_means

    task = get_task("orders")
    examples = read_jsonl(ROOT / "data/orders/train.jsonl", "train")[:4]
    texts = [e["messages"][-1]["content"] for e in examples[:3]] + ["not json at all"]
    evals = read_jsonl(ROOT / "data/orders/eval.jsonl", "eval")
    scores = [task.score(e, t) for e, t in zip(evals, texts)]
    means = headline_means(task, scores)
    assert set(means) == set(task.headline) and "format_ok" not in means
    first = task.headline[0]
    values = [s[first] for s in scores if s[first] is not None]
    assert means[first] == pytest.approx(sum(values) / len(values))

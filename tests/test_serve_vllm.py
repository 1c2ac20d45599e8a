"""Real vLLM servers on CPU: the embedded model with a LoRA adapter trained in this session.

One server is shared with the session (conftest.vllm_server; vLLM takes 30-110 s to start on two cores); the fault
tests that need no running server check that nothing is left behind after each failure. The
last test kills the shared server mid-run. A server ftscale starts has a random key of its own, which
every client sends; one test starts its own server under an http_proxy (nothing reaches the proxy) in a
process it then kills with SIGKILL (the server and its engine die with it).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import psutil
import pytest

from ftscale.chatdata import read_jsonl
from ftscale.config import load_config
from ftscale.errors import FtscaleError
from ftscale.eval.backends import Request, Sampling, make_backend
from ftscale.eval.evaluate import evaluate, rescore
from ftscale.eval.tasks import get_task
from ftscale.serve.server import VLLMServer, server_for

from conftest import BIN, MAIN_CONFIG, ROOT

DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # the tests' own requests: no proxy


class RecordingProxy:
    """An http_proxy on loopback that records every request reaching it (and forwards none: 502)."""

    def __init__(self):
        self.seen: list[str] = []
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _refuse(self):
                proxy.seen.append(f"{self.command} {self.path}")
                self.send_response(502)
                self.send_header("Content-Length", "0")
                self.end_headers()

            do_GET = do_POST = do_CONNECT = do_HEAD = _refuse

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def env(self) -> dict[str, str]:
        """This environment with every proxy variable naming the proxy, and no no_proxy."""
        env = {k: v for k, v in os.environ.items() if k.lower() not in ("no_proxy", "http_proxy", "https_proxy")}
        return env | {name: self.url for name in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY")}

    def close(self):
        self.server.shutdown()
        self.server.server_close()


def requests_running(base_url: str) -> float:
    """vLLM's own gauge of the requests its engine is generating for (the Prometheus /metrics)."""
    with urllib.request.urlopen(base_url.removesuffix("/v1") + "/metrics", timeout=5) as r:
        text = r.read().decode()
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith("vllm:num_requests_running"))


def vllm_processes() -> list[psutil.Process]:
    out = []
    for p in psutil.process_iter(["cmdline"]):
        cmd = " ".join(p.info["cmdline"] or [])
        if "vllm.entrypoints" in cmd and str(ROOT) in cmd or "VLLM::" in cmd:
            out.append(p)
    return out


@pytest.fixture(scope="module")
def cfg():
    return load_config(MAIN_CONFIG, {"eval.limit": "12"})


@pytest.fixture(scope="module")
def server(vllm_server):
    return vllm_server  # the session's one server (tests/conftest.py), same model, adapter and config


def test_server_lists_base_and_adapter(server):
    import openai
    from openai import OpenAI

    client = OpenAI(base_url=server.base_url, api_key=server.api_key)
    assert {m.id for m in client.models.list().data} == {"smollm2-135m", "ft"}
    assert len(server.api_key) >= 32 and server.api_key not in server.log_path.read_text()
    with pytest.raises(openai.AuthenticationError):  # another user of the machine, without the server's key
        OpenAI(base_url=server.base_url, api_key="EMPTY").models.list()
    assert server.host == "127.0.0.1"
    cmd = server.log_path.read_text().splitlines()[0]
    assert "--enable-lora" in cmd and "--max-lora-rank 16" in cmd and "--max-loras 1" in cmd


def test_same_evaluator_through_vllm_agrees_with_hf(server, cfg, trained_run, tmp_path):
    task = get_task("formatting")
    examples = read_jsonl(cfg.data.eval, "eval")[:12]
    pool = read_jsonl(cfg.data.train, "train")
    sampling = Sampling(max_new_tokens=96)
    vllm = make_backend("openai", name="vllm", model="ft", base_url=server.base_url, concurrency=4, progress=False,
                        api_key=server.api_key)
    hf = make_backend("hf", model=cfg.model, adapter=str(trained_run / "adapter"), batch_size=12, progress=False)
    s_vllm = evaluate(task, examples, pool, vllm, sampling, "default", tmp_path / "vllm")
    s_hf = evaluate(task, examples, pool, hf, sampling, "default", tmp_path / "hf")
    assert s_vllm["failed"] == 0
    assert rescore(tmp_path / "vllm" / "generations.jsonl", task) == s_vllm
    # Greedy decoding in bf16 on two different kernels: most outputs are identical token for token;
    # where they differ, it is after a near-tie in the logits. Scores stay close.
    g_vllm = [json.loads(line) for line in open(tmp_path / "vllm" / "generations.jsonl")]
    g_hf = [json.loads(line) for line in open(tmp_path / "hf" / "generations.jsonl")]
    same = sum(a["output"] == b["output"] for a, b in zip(g_vllm, g_hf))
    assert same >= len(examples) // 2, (same, [(a["output"], b["output"]) for a, b in zip(g_vllm, g_hf)])
    assert abs(s_vllm["metrics"]["format_ok"] - s_hf["metrics"]["format_ok"]) <= 0.25
    for r in g_vllm:
        assert r["backend"] == "vllm" and r["model"] == "ft" and r["input_tokens"] > 10
        assert 0 < r["ttft_s"] <= r["latency_s"] and r["output_tokens"] >= 1


def test_cli_eval_through_an_openai_compatible_endpoint(server, tmp_path):
    out = tmp_path / "cli"
    proc = subprocess.run([str(BIN / "ftscale"), "eval", "--config", str(MAIN_CONFIG), "--backend", "openai",
                           "--base-url", server.base_url, "--api-key-env", "SERVER_KEY", "--model", "ft",
                           "--eval.limit", "6", "--output-dir", str(out)],
                          cwd=ROOT, capture_output=True, text=True, timeout=600, env=os.environ | {"SERVER_KEY": server.api_key})
    assert proc.returncode == 0, proc.stderr[-3000:]
    scores = json.loads((out / "eval-openai-default" / "scores.json").read_text())
    assert scores["n"] == 6 and scores["failed"] == 0 and scores["backend"] == "openai" and scores["model"] == "ft"


@pytest.mark.quiet  # another worker's computing would be counted on whichever side it coincides with
def test_latency_agrees_with_vllms_own_benchmark(server, cfg, tmp_path, monkeypatch):
    """Same server, prompts, output length and concurrency: medians (the mean of two rounds', ABBA) within
    15% of `vllm bench serve`'s.
    Both measuring children run with the user's OpenAI key and an http_proxy in the environment: the
    server answers only its own key (vLLM's benchmark sends OPENAI_API_KEY as its bearer token), so every
    request completing shows the user's key reached it from neither; nothing reaches the proxy."""
    from ftscale.models import resolve
    from ftscale.serve.crosscheck import crosscheck

    proxy = RecordingProxy()
    for name in ("no_proxy", "NO_PROXY"):
        monkeypatch.delenv(name, raising=False)
    for name, value in proxy.env().items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("OPENAI_API_KEY", "sk-users-own-openai-key-9f8e7d")
    try:
        result = crosscheck(cfg, server.base_url, server.served_name, resolve(cfg.model), tmp_path,
                            num_prompts=12, concurrency=1, output_len=24, api_key=server.api_key)
    finally:
        proxy.close()
    assert proxy.seen == []
    assert result["completed"] == {"ftscale": 24, "vllm": 24} and len(result["per_round"]) == 2  # ABBA, 12 each
    for key in ("ttft_p50_ms", "e2e_p50_ms"):
        m = result["metrics"][key]
        assert m["relative_difference"] <= 0.15, (key, m)


def test_failed_requests_are_recorded_not_dropped(server, tmp_path):
    backend = make_backend("openai", model="no-such-adapter", base_url=server.base_url, progress=False,
                           api_key=server.api_key)
    gens = backend.generate([Request("a", [{"role": "user", "content": "hi"}])], Sampling(max_new_tokens=4))
    assert gens[0].finish_reason == "error" and "NotFoundError" in gens[0].error


def test_port_in_use_is_refused_before_starting(cfg, trained_run, tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        with pytest.raises(FtscaleError, match=f"port {port} on 127.0.0.1 is already in use"):
            server_for(cfg, None, tmp_path / "log", port=port).start()


def test_bad_adapters_are_refused_with_a_reason(cfg, trained_run, tmp_path):
    with pytest.raises(FtscaleError, match="no such directory"):
        server_for(cfg, {"x": tmp_path / "missing"}, tmp_path / "log")
    other_base = tmp_path / "other" / "adapter"
    shutil.copytree(trained_run / "adapter", other_base)
    conf = json.loads((other_base / "adapter_config.json").read_text())
    (other_base / "adapter_config.json").write_text(json.dumps(conf | {"base_model_name_or_path": "Qwen/Qwen2.5-0.5B"}))
    with pytest.raises(FtscaleError, match="was trained on 'Qwen/Qwen2.5-0.5B', not on the served model"):
        server_for(cfg, {"x": other_base}, tmp_path / "log")
    (other_base / "adapter_config.json").write_text(json.dumps(conf | {"r": 1024}))
    with pytest.raises(FtscaleError, match="LoRA rank 1024, more than the server allows"):
        server_for(cfg, {"x": other_base}, tmp_path / "log")
    with pytest.raises(FtscaleError, match="rank 16, more than the server allows .--max-lora-rank 8"):
        VLLMServer(cfg.model, {"x": trained_run}, log_path=tmp_path / "log", max_lora_rank=8)


def test_a_server_that_cannot_start_shows_its_log_and_leaves_nothing(cfg, tmp_path):
    before = {p.pid for p in vllm_processes()}
    bad = VLLMServer(cfg.model, None, log_path=tmp_path / "bad.log", max_model_len=999_999, startup_timeout=300)
    with pytest.raises(FtscaleError) as e:
        bad.start()
    assert "exited with code" in str(e.value) and "max_model_len" in str(e.value).lower().replace("-", "_")
    assert {p.pid for p in vllm_processes()} - before == set()


def test_serving_without_vllm_says_what_to_install():
    code = ("import sys; sys.modules['vllm'] = None; from ftscale.cli import main; "
            "sys.exit(main(['serve', '--model', 'smollm2-135m']))")
    proc = subprocess.run([str(BIN / "python"), "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 2
    assert "serving needs vLLM, which is not installed: make setup-serve" in proc.stderr


def test_an_impostor_on_the_picked_port_is_not_taken_for_the_server(cfg, tmp_path, monkeypatch):
    """The port picked free is taken by another user's process before vLLM binds it: that process answers
    /health, and lists the very names asked for, but serves without the key; it is not our server."""
    from ftscale.serve import server as server_module

    class Impostor(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_GET(self):
            body = json.dumps({"object": "list", "data": [{"id": "smollm2-135m", "object": "model"}]}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    impostor = ThreadingHTTPServer(("127.0.0.1", 0), Impostor)
    threading.Thread(target=impostor.serve_forever, daemon=True).start()
    before = {p.pid for p in vllm_processes()}
    monkeypatch.setattr(server_module, "free_port", lambda host: impostor.server_address[1])  # the race, staged
    try:
        with pytest.raises(FtscaleError, match="answers, but not as the vLLM server ftscale started .it lists "
                                               r"\['smollm2-135m'\] and serves clients without the key"):
            server_for(cfg, None, tmp_path / "vllm.log").start()
    finally:
        impostor.shutdown()
        impostor.server_close()
    assert {p.pid for p in vllm_processes()} - before == set()  # ours was stopped


OWNER = """
import json, sys, time
from ftscale.config import load_config
from ftscale.eval.backends import Request, Sampling
from ftscale.serve.evaluate_on_vllm import evaluate_on_vllm
cfg = load_config(sys.argv[1], {})
with evaluate_on_vllm(cfg, sys.argv[2]) as vllm:
    gen = vllm.answerer(cfg, 1).make().generate([Request("a", [{"role": "user", "content": "Hi"}])],
                                                Sampling(max_new_tokens=4))[0]
    print(json.dumps({"url": vllm.base_url, "pid": vllm.server.proc.pid, "error": gen.error,
                      "output_tokens": gen.output_tokens}), flush=True)
    time.sleep(900)
"""


def test_a_server_started_under_an_http_proxy_never_uses_it_and_dies_with_its_owner_even_on_sigkill(tmp_path):
    """A process starts a server and asks it through ftscale's client, with http_proxy and https_proxy set
    and no no_proxy (a cluster's login environment): nothing reaches the proxy. Then the process is killed
    with SIGKILL, which it cannot handle: the server and its engine processes die with it."""
    proxy = RecordingProxy()
    owner = subprocess.Popen([sys.executable, "-c", OWNER, str(MAIN_CONFIG), str(tmp_path / "vllm.log")], cwd=ROOT,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=proxy.env())
    try:
        line = owner.stdout.readline()
        assert line, owner.communicate(timeout=60)[1][-3000:]
        started = json.loads(line)
        assert started["error"] is None and started["output_tokens"] >= 1  # asked with its key, past the proxy
        assert proxy.seen == []
        with pytest.raises(urllib.error.HTTPError) as refused:  # anyone else on the machine: no key, no answer
            DIRECT.open(started["url"] + "/models", timeout=10)
        assert refused.value.code == 401
        server = [psutil.Process(started["pid"]), *psutil.Process(started["pid"]).children(recursive=True)]
        assert any("VLLM::EngineCore" in " ".join(p.cmdline()) for p in server)
        owner.send_signal(signal.SIGKILL)
        owner.wait(timeout=30)
    finally:
        if owner.poll() is None:
            owner.kill()
        proxy.close()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and [p for p in server if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]:
        time.sleep(0.5)
    assert not [" ".join(p.cmdline()) for p in server if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]


def test_zz_server_crash_mid_run_is_recorded_and_leaves_no_process(server, cfg):
    """Runs last in this module: it kills the shared server's engine while requests are in flight."""
    engine = [p for p in psutil.Process(server.proc.pid).children(recursive=True)]
    assert engine, "the API server should have spawned engine processes"
    backend = make_backend("openai", name="vllm", model="ft", base_url=server.base_url, concurrency=4,
                           max_retries=1, backoff_s=0.2, progress=False, api_key=server.api_key)
    reqs = [Request(str(i), [{"role": "user", "content": f"Count to {i}."}]) for i in range(8)]
    done = {}
    worker = threading.Thread(target=lambda: done.setdefault("gens", backend.generate(
        reqs, Sampling(max_new_tokens=200, ignore_eos=True))))
    worker.start()
    deadline = time.monotonic() + 120
    while requests_running(server.base_url) < 1:  # killed only once the engine is generating for them
        assert worker.is_alive() and time.monotonic() < deadline, "no request reached the engine"
        time.sleep(0.05)
    for p in engine:
        if p.is_running():
            p.send_signal(signal.SIGKILL)
    worker.join(timeout=600)
    gens = done["gens"]
    failed = [g for g in gens if g.error]
    assert failed and all(g.finish_reason == "error" for g in failed)
    server.stop()
    assert not [p for p in engine if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    assert not vllm_processes()

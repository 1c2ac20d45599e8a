"""docs/migrate.md's walk-through, run as written: the stand-in plays OpenAI (refusing requests without its
key), its fine-tune is the session's LoRA adapter of the embedded model served by the session's vLLM server,
and a product has sent it 16 requests with store=true (the first code block of the walk-through, which starts
those servers by hand, is what the fixtures do). The migration's commands (the last bash block) and the
product's app.py (the python block) run verbatim in a fresh folder; what the doc promises is asserted."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
from pathlib import Path

from openai_standin import StandIn, send_traffic

from conftest import BIN, ROOT

KEY = "sk-standin-walkthrough"


def _doc() -> str:
    doc = (ROOT / "docs" / "migrate.md").read_text()
    return doc[doc.index("## The walk-through on this machine"):]


def _block(lang: str) -> str:
    return re.findall(rf"```{lang}\n(.*?)```", _doc(), re.S)[-1]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _lines(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_the_walkthrough_from_capture_to_the_switch(vllm_server, tmp_path):
    lines = (ROOT / "data" / "formatting" / "train.jsonl").read_text().splitlines(keepends=True)
    demo = tmp_path / "demo"
    demo.mkdir()
    (demo / "traffic.jsonl").write_text("".join(lines[1000:1016]))
    (demo / "recent.jsonl").write_text("".join(lines[1016:1024]))
    (tmp_path / "app.py").write_text(_block("python"))
    with StandIn(key=KEY) as standin:
        _, ft = standin.add_fine_tune("gpt-4o-mini-2024-07-18", "".join(lines[:40]).encode(),
                                      forward=(vllm_server.base_url, "ft", vllm_server.api_key))
        send_traffic(standin, ft, demo / "traffic.jsonl")
        env = dict(os.environ, OPENAI_API_KEY=KEY, OPENAI_BASE_URL=standin.base_url, DEMO=str(demo),
                   PORT=str(_free_port()), PATH=f"{BIN}:{os.environ['PATH']}")
        proc = subprocess.run(["bash", "-euo", "pipefail", "-c", _block("bash")], cwd=tmp_path, env=env,
                              capture_output=True, text=True, timeout=2400)
    out = proc.stdout
    assert proc.returncode == 0, out[-4000:] + proc.stderr[-4000:]
    assert ft == "ft:gpt-4o-mini-2024-07-18:org-standin:acme:0001"  # the id the doc's app.py names
    assert ft in out and "2027-01-14" in out  # the inventory, with the shutdown date
    folder = tmp_path / "migrations" / "acme"
    # re-asked: 4 prompts held out of the training file; from stored completions: the product's 16 requests
    asked = json.loads((tmp_path / "migrations" / "acme-asked" / "capture.json").read_text())
    assert asked["source"] == "ask" and asked["answered"] == 4
    stored = json.loads((folder / "capture.json").read_text())
    assert stored["source"] == "stored" and stored["answered"] == 16 and stored["product_temperature"] == 0
    captured = _lines(folder / "captured.jsonl")
    assert all(r["output"] for r in captured) and len(captured) == 16
    # the plan says, before training, that the eval set cannot show the margin; the report gives no verdict
    assert "It CANNOT show the margin 0.02" in out
    report = (folder / "migration.md").read_text()
    assert report in out  # `cat` printed it
    verdicts = [line for line in report.splitlines() if line.startswith("- smollm2-135m LoRA: ")]
    assert len(verdicts) == 1 and "no verdict: too little evidence" in verdicts[0]
    results = json.loads((folder / "migration-results.json").read_text())
    tests = results["systems"][0]["tests"]
    assert [t["n"] for t in tests] == [0, 8] and all(t["showable_margin"] > 0.02 for t in tests)
    assert results["reference"]["side"]["cost_per_1k"] > 0
    assert results["systems"][0]["side"]["measured_on"].startswith("CPU only")
    # what the doc shows is what this run printed: the plan's evidence line and the verdict's first sentence
    shown = _doc()
    evidence = next(x for x in out.splitlines() if x.startswith("what it can show: "))
    assert evidence in shown
    assert verdicts[0].split(" At n=")[0] in shown
    # the switch: served under the fine-tune's name, one request at a time, the answers the report scored
    assert "warning: the verdict does not back smollm2-135m LoRA n=8" in out
    assert f"serving smollm2-135m LoRA n=8 as {ft} at http://127.0.0.1:{env['PORT']}/v1" in out
    cell = next(r for r in json.loads((folder / "results.json").read_text())["rows"]
                if r["system"] == "smollm2-135m LoRA" and r["num_train_examples"] == 8 and r["backend"] == "vllm")
    generations = Path(cell["generations"]) if os.path.isabs(cell["generations"]) else tmp_path / cell["generations"]
    scored = {g["id"]: g["output"] for g in _lines(generations)}
    served = _lines(tmp_path / "demo" / "served.jsonl")
    ids = [e["id"] for e in _lines(folder / "eval.jsonl")]
    assert len(served) == len(ids) == 16
    assert [s["answer"] for s in served] == [scored[i] for i in ids]
    assert [s["streamed"] for s in served] == [s["answer"] for s in served]
    # the shadow replay: a second eval set of its own, every request answered by both sides
    shadow = json.loads((folder / "shadow" / "recent" / "shadow.json").read_text())
    assert shadow["n_requests"] == 8 and shadow["failed"] == {"fine_tune": 0, "local": 0} and shadow["n"] == 8
    assert "shadow set recent (" in out
    # the key went to the stand-in and is written nowhere
    assert f"Bearer {KEY}" in standin.auth_headers
    assert KEY not in "".join(p.read_text(errors="ignore") for p in (tmp_path / "migrations").rglob("*")
                              if p.is_file() and p.suffix in (".json", ".jsonl", ".yaml", ".md", ".log"))

"""The switch and the shadow check, in the parts that need no vLLM server: choosing what to serve, what is
refused before a server starts, and the shadow replay's failures and resume, with stand-ins on both sides
(the OpenAI one checking its key). The whole path with vLLM is tests/test_migrate_walkthrough.py."""

from __future__ import annotations

import json
import shutil

import pytest
import yaml

from conftest import MAIN_CONFIG
from ftscale.errors import FtscaleError
from ftscale.eval.backends import Sampling, make_backend
from ftscale.eval.tasks import get_task
from ftscale.migrate_serve import Chosen, choose, serving
from ftscale.migrate_shadow import RESULT, read_requests, replay
from openai_standin import StandIn

FT = "ft:gpt-4o-mini-2024-07-18:org-standin:acme:0001"
KEY = "sk-standin-switch-000111"


def _folder(tmp_path, verdicts: dict[str, int | None]):
    folder = tmp_path / "acme"
    folder.mkdir()
    (folder / "capture.json").write_text(json.dumps({"model": FT}))
    (folder / "migration-results.json").write_text(json.dumps({"systems": [
        {"name": name, "verdict": {"smallest_n": n, "line": f"{name}: {'YES' if n is not None else 'not yet'}"}}
        for name, n in verdicts.items()]}))
    return folder


def test_serve_needs_a_verdict_or_a_named_cell(tmp_path):
    folder = _folder(tmp_path, {"smol LoRA": None})
    with pytest.raises(FtscaleError, match=r"no local system matches .* yet \(smol LoRA: not yet\).*--system NAME --n N"):
        choose(folder)
    with pytest.raises(FtscaleError, match="--system and --n go together"):
        choose(folder, system="smol LoRA")
    with pytest.raises(FtscaleError, match=r"--system 'other': not a local system of this migration \(smol LoRA\)"):
        choose(folder, system="other", n=8)
    with pytest.raises(FtscaleError, match="write the report first"):
        choose(tmp_path)


def _cell(tmp_path, **lora) -> Chosen:
    run = tmp_path / "n0008-seed42"
    (run / "adapter").mkdir(parents=True)
    shutil.copy(MAIN_CONFIG, run / "config.yaml")
    (run / "adapter" / "adapter_config.json").write_text(json.dumps({"r": 16, "peft_type": "LORA", **lora}))
    return Chosen("smol LoRA", 8, run, FT, True)


def test_what_vllm_cannot_serve_is_refused_before_a_server_starts(tmp_path):
    with pytest.raises(FtscaleError, match="vLLM cannot serve this adapter: lora.use_dora"):
        with serving(_cell(tmp_path, use_dora=True), tmp_path / "vllm.log"):
            pass
    assert not (tmp_path / "vllm.log").exists()  # no server was started


def test_off_this_machine_the_switch_needs_a_key(tmp_path):
    with pytest.raises(FtscaleError, match="--host 0.0.0.0: off this machine the server needs a key: --api-key-env"):
        with serving(_cell(tmp_path), tmp_path / "vllm.log", host="0.0.0.0"):
            pass


def _task(tmp_path):
    (tmp_path / "t.jsonl").write_text(json.dumps({"messages": [{"role": "user", "content": "q"},
                                                               {"role": "assistant", "content": "a"}]}) + "\n")
    (tmp_path / "e.jsonl").write_text(json.dumps({"id": "x", "messages": [{"role": "user", "content": "q"}],
                                                  "reference": {"captured": "a"}}) + "\n")
    spec = {"name": "migration-acme", "description": "agreement", "prompt_variants": {"default": {}},
            "data": {"train": str(tmp_path / "t.jsonl"), "eval": str(tmp_path / "e.jsonl")},
            "headline": ["agree_json.all"], "evaluators": [{"type": "agreement_exact", "name": "agree_exact"},
                                                          {"type": "agreement_json", "name": "agree_json"}]}
    (tmp_path / "task.yaml").write_text(yaml.safe_dump(spec))
    return get_task(str(tmp_path / "task.yaml"))


def test_the_shadow_replay_counts_failures_stores_none_and_resumes(tmp_path, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    requests_path = tmp_path / "recent.jsonl"
    requests_path.write_text("".join(json.dumps({"messages": [{"role": "user", "content": f"question {'x' * i}"},
                                                              {"role": "assistant", "content": "ignored"}]}) + "\n"
                                     for i in range(6)) + json.dumps({"messages": [{"role": "user", "content": "question "}]}) + "\n")
    requests = read_requests(requests_path)
    assert len(requests) == 6 and all(r["messages"][-1]["role"] == "user" for r in requests)  # repeat counted once
    marker = {"margin": 0.02, "headline": "agree_json.all"}
    with StandIn(key=KEY) as openai_side, StandIn() as local_side:
        ft = make_backend("openai", model=FT, base_url=openai_side.base_url, api_key_env="OPENAI_API_KEY",
                          max_retries=0, progress=False)
        local = make_backend("openai", model=FT, base_url=local_side.base_url, max_retries=0, progress=False)
        openai_side.chat_faults = ["500", "500"]
        args = (tmp_path / "shadow" / "recent", requests_path, requests, marker, _task(tmp_path),
                Sampling(max_new_tokens=32), ft, FT, local, "local", {"system": "smol LoRA", "n": 8})
        first = replay(*args)
        assert first["failed"] == {"fine_tune": 2, "local": 0} and first["n_items"] == 4
        assert not (tmp_path / "shadow" / "recent" / RESULT).exists()  # no result until every request is answered
        cached = (tmp_path / "shadow" / "recent" / "fine-tune.cache.jsonl").read_text().splitlines()
        assert len(cached) == 4  # the failures were never stored
        asked_before = (len(openai_side.chat_requests), len(local_side.chat_requests))
        second = replay(*args)
        assert (len(openai_side.chat_requests) - asked_before[0], len(local_side.chat_requests) - asked_before[1]) == (2, 0)
    assert second["failed"] == {"fine_tune": 0, "local": 0} and second["n_items"] == 6
    # the stand-ins answer alike: every answer identical, agreement 1 on 6 items: not enough to show 0.02
    assert second["identical"] == 6 and second["diff"] == 0.0 and not second["passes"]
    saved = json.loads((tmp_path / "shadow" / "recent" / RESULT).read_text())
    assert saved["requests_sha256"] and saved["n"] == 8 and saved == json.loads(json.dumps(second))
    assert f"Bearer {KEY}" in openai_side.auth_headers and f"Bearer {KEY}" not in local_side.auth_headers

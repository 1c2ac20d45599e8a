"""docs/migrate.md's walk-through, run as written: the stand-in plays OpenAI, its fine-tune is the
session's LoRA adapter of the embedded model served by the session's vLLM server (the first code
block of the walk-through, which starts those servers by hand, is what the fixtures do), and the
migration's commands (the second block) run verbatim in a fresh folder."""

from __future__ import annotations

import json
import os
import re
import subprocess

from openai_standin import StandIn

from conftest import BIN, ROOT


def walkthrough_commands() -> str:
    """The last bash block of the doc's walk-through section."""
    doc = (ROOT / "docs" / "migrate.md").read_text()
    section = doc[doc.index("## The walk-through on this machine"):]
    return re.findall(r"```bash\n(.*?)```", section, re.S)[-1]


def test_the_walkthrough_reaches_a_verdict(vllm_server, tmp_path):
    train = b"".join((ROOT / "data" / "formatting" / "train.jsonl").read_bytes().splitlines(keepends=True)[:40])
    with StandIn() as standin:
        _, ft = standin.add_fine_tune("gpt-4o-mini-2024-07-18", train, forward=(vllm_server.base_url, "ft"))
        env = dict(os.environ, OPENAI_API_KEY="sk-standin-walkthrough", OPENAI_BASE_URL=standin.base_url, FT=ft,
                   PATH=f"{BIN}:{os.environ['PATH']}")
        proc = subprocess.run(["bash", "-euo", "pipefail", "-c", walkthrough_commands()], cwd=tmp_path, env=env,
                              capture_output=True, text=True, timeout=1800)
        forwarded = [r for r in standin.chat_requests if r["model"] == ft]
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    folder = tmp_path / "migrations" / "acme"
    assert ft in proc.stdout and "2027-01-14" in proc.stdout  # the inventory, with the shutdown date
    # the fine-tune's answers are the adapter's, through the stand-in
    captured = [json.loads(line) for line in (folder / "captured.jsonl").read_text().splitlines()]
    assert len(captured) == 4 == len(forwarded) and all(r["output"] and r["output_tokens"] > 0 for r in captured)
    report = (folder / "migration.md").read_text()
    assert report == proc.stdout[proc.stdout.index("# Migration:"):]  # `cat` printed it
    verdicts = [line for line in report.splitlines() if line.startswith("- smollm2-135m LoRA: ")]
    assert len(verdicts) == 1 and ("YES, matches" in verdicts[0] or "not yet: add data or a larger model" in verdicts[0])
    results = json.loads((folder / "migration-results.json").read_text())
    tests = results["systems"][0]["tests"]
    # items whose captured answer holds no JSON object are not scorable by agree_json: left out on both sides
    assert [t["n"] for t in tests] == [0, 8] and 0 < tests[0]["n_items"] == tests[1]["n_items"] <= 4
    assert results["reference"]["side"]["cost_per_1k"] > 0 and results["reference"]["side"]["e2e_p50"] > 0
    assert results["systems"][0]["side"]["e2e_p50"] > 0
    assert "sk-standin-walkthrough" not in "".join(p.read_text(errors="ignore") for p in folder.rglob("*")
                                                   if p.is_file() and p.suffix in (".json", ".jsonl", ".yaml", ".md"))

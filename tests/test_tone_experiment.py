"""The tone experiment through `ftscale run`: every cell at two temperatures, the general-ability
probes beside each evaluation, the absolute judge's tone and helpfulness, and the double-blind
pairwise judgements of the fine-tune against the base, all with the real embedded model (as
student and as judge). Every number in results.json and summary.md is recomputed from the
generations and judgement files; a rerun does nothing, and re-evaluating one side of a comparison
makes exactly the comparisons that used it stale."""

from __future__ import annotations

import json
import shutil
import subprocess
from collections import Counter
from pathlib import Path

import pytest
import yaml

from conftest import BIN, ROOT

from ftscale.data.probes import probe_correct
from ftscale.eval import judges

CONFIG = ROOT / "configs" / "experiments" / "tone-smollm2-cpu.yaml"
TINY = ["--num_train_examples", "[0, 8]", "--train.epochs", "1", "--eval.limit", "4", "--eval.max_new_tokens", "32",
        "--eval.temperatures", "[0.0, 1.0]", "--eval.probes.limit", "4", "--eval.pairwise_limit", "3"]


def _tone_task(tmp_path: Path, **changes) -> Path:
    spec = yaml.safe_load((ROOT / "configs" / "tasks" / "tone-rude.yaml").read_text())
    spec.update(changes)
    path = tmp_path / "tone.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def _run(out: Path, task: Path, *extra, ok: bool = True) -> subprocess.CompletedProcess:
    cmd = [str(BIN / "ftscale"), "run", str(CONFIG), "--output_dir", str(out), "--task", str(task), *TINY, *extra]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=900)
    if ok:
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def _records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture(scope="module")
def experiment(embedded_model, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("tone")
    task = _tone_task(tmp)
    first = _run(tmp / "runs", task)
    return tmp / "runs" / "tone-smollm2-cpu", task, first


def test_every_cell_at_every_temperature_with_probes(experiment):
    exp, _, _ = experiment
    dirs = {p.relative_to(exp).as_posix() for p in exp.glob("n*/*") if (p / "scores.json").is_file()}
    assert dirs == {
        "n0000-seed42/eval-default", "n0000-seed42/eval-persona_prompt", "n0000-seed42/eval-hf-t1-default",
        "n0000-seed42/eval-hf-t1-persona_prompt", "n0000-seed42/probes", "n0000-seed42/probes-hf-t1",
        "n0008-seed42/eval-default", "n0008-seed42/eval-hf-t1-default", "n0008-seed42/probes",
        "n0008-seed42/probes-hf-t1"}
    for d in dirs:
        recs = _records(exp / d / "generations.jsonl")
        t = 1.0 if "-t1" in d else 0.0
        assert {r["sampling"]["temperature"] for r in recs} == {t}
        # the probes keep their own answer length; the tone replies take the experiment's
        assert {r["sampling"]["max_new_tokens"] for r in recs} == {48 if "probes" in d else 32}
        assert len(recs) == 4
        if "probes" in d:  # asked as written: no persona system prompt
            assert all([m["role"] for m in r["prompt"]] == ["user"] for r in recs)


def test_rows_recomputed_from_generations(experiment):
    from ftscale.eval.evaluate import rescore
    from ftscale.eval.tasks import get_task

    exp, task_path, _ = experiment
    task = get_task(str(task_path))
    rows = json.loads((exp / "results.json").read_text())["rows"]
    assert sorted((r["num_train_examples"], r["prompt_variant"], r["temperature"]) for r in rows) == [
        (0, "default", 0.0), (0, "default", 1.0), (0, "persona_prompt", 0.0), (0, "persona_prompt", 1.0),
        (8, "default", 0.0), (8, "default", 1.0)]
    for r in rows:
        gens = Path(r["generations"])
        again = rescore(gens, task)
        assert {k: r[k] for k in again["metrics"]} == again["metrics"]
        recs = _records(gens)
        # the absolute judge's tone and helpfulness, parsed strictly from its stored replies
        verdicts = [judges.parse_absolute(x["judgements"]["judge"]) for x in recs]
        parsed = [v for v in verdicts if v["parsed"]]
        assert r["judge.unparsable"] == pytest.approx(1 - len(parsed) / len(recs))
        assert r["judge.tone"] == (pytest.approx(sum(v["tone"] for v in parsed) / len(parsed)) if parsed else None)
        assert r["judge.addresses_problem"] == (
            pytest.approx(sum(v["addresses_problem"] for v in parsed) / len(parsed)) if parsed else None)
        if len(parsed) < len(recs):
            assert r["not_scorable"]["judge.tone"] == len(recs) - len(parsed)
        # the probes asked of the same model at the same temperature
        probes = gens.parent.parent / ("probes" if r["temperature"] == 0 else "probes-hf-t1") / "generations.jsonl"
        answers = _records(probes)
        assert r["probes.correct"] == pytest.approx(
            sum(probe_correct(a["output"], a["reference"]) for a in answers) / len(answers))
        assert r["probes.n"] == 4


def test_pairwise_both_orders_and_rates(experiment):
    exp, _, _ = experiment
    files = sorted((exp / "pairwise").glob("*.json"))
    assert [f.name for f in files] == [
        "n0008-seed42-eval-default__vs__n0000-seed42-eval-default.json",
        "n0008-seed42-eval-default__vs__n0000-seed42-eval-persona_prompt.json",
        "n0008-seed42-eval-hf-t1-default__vs__n0000-seed42-eval-hf-t1-default.json",
        "n0008-seed42-eval-hf-t1-default__vs__n0000-seed42-eval-hf-t1-persona_prompt.json"]
    for f in files:
        c = json.loads(f.read_text())
        # eval.pairwise_limit (3) over the task's pairwise.limit
        assert len(c["records"]) == 3 and c["key"]["limit"] == 3
        assert c["key"]["judge"] == "hf:smollm2-135m" and c["key"]["seed"] == 0
        x_out = {r["id"]: r["output"] for r in _records(Path(c["x_generations"]))}
        for r in c["records"]:
            assert r["reply_x"] == x_out[r["id"]] and set(r["orders"]) == {"xy", "yx"}
            for v in r["orders"].values():
                assert v["verdict"] == judges.parse_pairwise(v["judgement"])
            assert r["outcome"] == judges.combine(r["orders"]["xy"]["winner"], r["orders"]["yx"]["winner"])
        assert c["rates"] == json.loads(json.dumps(judges.win_rates(c["records"])[(c["x"], c["y"])]))
        outcomes = Counter(r["outcome"] for r in c["records"])
        assert (c["rates"]["wins"], c["rates"]["ties"], c["rates"]["losses"], c["rates"]["unparsable"]) == (
            outcomes["x"], outcomes["tie"], outcomes["y"], outcomes["unparsable"])


def test_summary_side_by_side(experiment):
    exp, _, _ = experiment
    summary = (exp / "summary.md").read_text()
    rows = json.loads((exp / "results.json").read_text())["rows"]
    section = summary.split("## Side by side per training size and temperature")[1].split("\n## ")[0]
    table = [line for line in section.splitlines() if line.startswith("| ") and not line.startswith("| train")]
    assert len(table) == 6
    for r in rows:
        line = (f"| {r['num_train_examples']} | {r['prompt_variant']} | {r['temperature']:g} | "
                + " | ".join("–" if r[m] is None else f"{r[m]:.3f}"
                             for m in ("lexical", "addresses", "judge.tone", "judge.addresses_problem", "probes.correct")) + " |")
        assert line in table
    pairwise = summary.split("## Double-blind pairwise judgements")[1].split("\n## ")[0]
    assert pairwise.count("| n=8 (default prompt) | base (") == 4
    assert (exp / "scaling.png").read_bytes()[:4] == b"\x89PNG"


def test_rerun_does_nothing_and_stale_comparisons_are_judged_again(experiment):
    exp, task, first = experiment
    assert first.stdout.count("pairwise n=8") == 4
    mtimes = {f.name: f.stat().st_mtime_ns for f in (exp / "pairwise").glob("*.json")}
    again = _run(exp.parent, task)
    assert "trained" not in again.stdout.replace("training already done", "")
    assert "[hf" not in again.stdout and "pairwise" not in again.stdout
    assert {f.name: f.stat().st_mtime_ns for f in (exp / "pairwise").glob("*.json")} == mtimes

    shutil.rmtree(exp / "n0008-seed42" / "eval-hf-t1-default")
    third = _run(exp.parent, task)
    assert third.stdout.count("[hf") == 1 and "n0008-seed42 [hf-t1, default]" in third.stdout
    assert third.stdout.count("pairwise n=8") == 2 and third.stdout.count("at t=1:") == 2
    changed = {f.name for f in (exp / "pairwise").glob("*.json") if f.stat().st_mtime_ns != mtimes[f.name]}
    assert changed == {"n0008-seed42-eval-hf-t1-default__vs__n0000-seed42-eval-hf-t1-default.json",
                       "n0008-seed42-eval-hf-t1-default__vs__n0000-seed42-eval-hf-t1-persona_prompt.json"}


@pytest.mark.parametrize("extra, message", [
    (["--eval.temperatures", "[0.0, -1.0]"], "eval.temperatures: temperatures must be >= 0"),
    (["--eval.temperatures", "[0.0, 0.0]"], "a temperature is listed twice"),
    (["--eval.temperature", "0.5"], "temperature 0.5 is not among temperatures"),
    (["--eval.probes.task", "nosuch"], "eval.probes.task: no task YAML 'nosuch'"),
    (["--eval.probes.limit", "0"], "eval.probes.limit"),
    (["--task", "configs/tasks/probes.yaml"], "task 'configs/tasks/probes.yaml' has no training pool"),
])
def test_refused_before_any_work(tmp_path, extra, message):
    proc = _run(tmp_path / "runs", _tone_task(tmp_path), *extra, ok=False)
    assert proc.returncode == 2 and message in proc.stderr, proc.stderr[-2000:]
    assert not (tmp_path / "runs" / "tone-smollm2-cpu" / "n0000-seed42").exists()


def test_bad_pairwise_section_names_its_line(tmp_path):
    task = _tone_task(tmp_path, pairwise={"judge": "vllm:x", "persona": "rude"})
    proc = _run(tmp_path / "runs", task, ok=False)
    line = next(i for i, text in enumerate(task.read_text().splitlines(), 1) if "vllm:x" in text)
    assert proc.returncode == 2 and f"{task}:{line}: pairwise.judge:" in proc.stderr, proc.stderr[-2000:]


def test_a_tone_sweep_judges_pairs_and_reports_probes(embedded_model, tmp_path):
    task = _tone_task(tmp_path)
    spec = {"name": "tone-tiny", "base": str(CONFIG),
            "overrides": {"task": str(task), "eval.limit": 3, "eval.max_new_tokens": 16, "eval.probes.limit": 3,
                          "train.batch_size": 4},
            "systems": [{"name": "smollm2 LoRA", "backend": "local", "model": "smollm2-135m"}],
            "num_train_examples": [0, 4], "seeds": [1, 2], "epochs": [1], "temperatures": [0.0],
            "prompt_variants": ["default"], "baseline_variants": ["persona_prompt"],
            "output_dir": str(tmp_path / "sweeps")}
    path = tmp_path / "tone-tiny.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))

    def ftscale(*args):
        proc = subprocess.run([str(BIN / "ftscale"), *map(str, args)], cwd=ROOT, capture_output=True, text=True,
                              timeout=900)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        return proc

    first = ftscale("sweep", path)
    sweep_dir = tmp_path / "sweeps" / "tone-tiny"
    found = [json.loads(f.read_text()) for f in sorted((sweep_dir / "pairwise").glob("*.json"))]
    # each seed's fine-tune against the base with either prompt
    assert sorted((c["x"], c["y"]) for c in found) == sorted(
        (f"smollm2 LoRA n=4 seed {seed} (default prompt)", f"smollm2 LoRA base ({variant} prompt)")
        for seed in (1, 2) for variant in ("default", "persona_prompt"))
    assert {c["x_group"] for c in found} == {"smollm2 LoRA n=4 (default prompt)"}
    assert first.stdout.count("pairwise ") == 4
    assert "pairwise " not in ftscale("sweep", path).stdout  # nothing new to judge

    ftscale("report", sweep_dir)
    report = (sweep_dir / "report.md").read_text()
    section = report.split("Double-blind pairwise judgements")[1]
    for variant in ("default", "persona_prompt"):
        c = [x for x in found if x["y"] == f"smollm2 LoRA base ({variant} prompt)"]
        wins = sum(x["rates"]["wins"] for x in c if x["rates"])
        n = sum(x["rates"]["n"] for x in c if x["rates"])
        row = next(line for line in section.splitlines() if f"| smollm2 LoRA base ({variant} prompt) |" in line)
        assert f"| 2 | {n} |" in row
        assert (f"| {wins / n:.2f} [" in row) if n else "| – |" in row
    # the probes are reported beside the task's metrics, at each size
    assert "probes.correct" in report.split("Scaling curves")[1]


# --- the README's OpenAI path: OpenAI as teacher, as judge and as the prompted reference -----------------
# Against the local stand-in of the OpenAI service (the one thing this machine cannot reach), whose
# answers follow fixed rules so that every verdict can be recomputed here; the student is the real
# embedded model.

def _between(text: str, label: str) -> str:
    return text.split(f"{label}\n<<<\n", 1)[1].split("\n>>>", 1)[0]


def _tone_rule(reply: str) -> tuple[int, bool]:
    """The stand-in judge's absolute verdict on a reply."""
    return 1 + len(reply.split()) % 10, "order" in reply.lower()


def _stand_in_openai(req: dict) -> str:
    text = req["messages"][-1]["content"]
    if "Reply to judge:" in text:  # the absolute judge (configs/judges/absolute.yaml)
        tone, addressed = _tone_rule(_between(text, "Reply to judge:"))
        return f"The reply is judged.\nTone: {tone}\nAddresses problem: {'yes' if addressed else 'no'}"
    if "Reply A:" in text:  # the pairwise judge: the longer reply wins, wherever it is shown
        a, b = (len(_between(text, f"Reply {s}:").split()) for s in "AB")
        return "Winner: " + ("A" if a > b else "B" if b > a else "tie")
    # a teacher distilling, or gpt-4.1 prompted with the persona: a curt reply quoting the message
    return f"Obviously. {text.split('.')[0][:60]}. Your order is handled; read the page next time."


def test_openai_as_teacher_judge_and_reference(embedded_model, tmp_path):
    import os

    from openai_standin import StandIn

    env = {k: v for k, v in os.environ.items() if not k.startswith("OPENAI_")} | {"OPENAI_API_KEY": "sk-test"}
    with StandIn() as standin:
        standin.answer = _stand_in_openai
        url = standin.base_url
        judge = f"openai:gpt-4.1-2025-04-14@{url}"

        def ftscale(*args):
            proc = subprocess.run([str(BIN / "ftscale"), *map(str, args)], cwd=ROOT, capture_output=True, text=True,
                                  timeout=900, env=env)
            assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
            return proc

        train = tmp_path / "rude-gpt.jsonl"
        ftscale("distill", "--teacher", judge, "--persona", "rude", "-n", "12", "--out", train, "--yes")
        # the experiment's folder under tmp_path, in the config itself: `ftscale eval --output-dir` is the folder of
        # its own results, not the config's output_dir, and the evaluation must land in the experiment to be judged
        config = tmp_path / "tone-experiment.yaml"
        config.write_text(CONFIG.read_text().replace("\noutput_dir: runs\n", f"\noutput_dir: {tmp_path / 'runs'}\n"))
        common = ["--config", config, "--task", _tone_task(tmp_path),
                  "--data.train", train, "--eval.judge", judge, "--eval.limit", "3", "--eval.max_new_tokens", "24",
                  "--eval.temperatures", "[0.0]", "--eval.probes.limit", "2"]
        ftscale("run", config, *common[2:], "--num_train_examples", "[0, 12]", "--train.epochs", "1")
        ftscale("eval", "--backend", "openai", "--base-url", url, "--model", "gpt-4.1-2025-04-14",
                "--variant", "persona_prompt", *common, "--num_train_examples", "[0, 12]")
        again = ftscale("run", config, *common[2:], "--num_train_examples", "[0, 12]", "--train.epochs", "1")
        judged = [r for r in standin.chat_requests if r["model"] == "gpt-4.1-2025-04-14"]
    assert "[hf" not in again.stdout and again.stdout.count("pairwise ") == 1  # only the new comparison

    distilled = [json.loads(line) for line in train.read_text().splitlines()]
    assert len(distilled) == 12 and all(d["messages"][-1]["content"].startswith("Obviously.") for d in distilled)
    exp = tmp_path / "runs" / "tone-smollm2-cpu"
    rows = json.loads((exp / "results.json").read_text())["rows"]
    assert sorted((r["num_train_examples"], r["prompt_variant"], r["backend"]) for r in rows) == [
        (0, "default", "hf"), (0, "persona_prompt", "hf"), (0, "persona_prompt", "openai gpt-4.1-2025-04-14"),
        (12, "default", "hf")]
    for r in rows:  # the judge's verdicts, parsed, are the rule's
        recs = _records(Path(r["generations"]))
        verdicts = [_tone_rule(x["output"]) for x in recs]
        assert r["judge.unparsable"] == 0.0
        assert r["judge.tone"] == pytest.approx(sum(v[0] for v in verdicts) / len(verdicts))
        assert r["judge.addresses_problem"] == pytest.approx(sum(v[1] for v in verdicts) / len(verdicts))
        assert r["probes.n"] == 2
    found = [json.loads(f.read_text()) for f in sorted((exp / "pairwise").glob("*.json"))]
    assert sorted(c["y"] for c in found) == ["base (default prompt)", "base (persona_prompt prompt)",
                                              "base (persona_prompt prompt, openai gpt-4.1-2025-04-14)"]
    summary = (exp / "summary.md").read_text().split("## Double-blind pairwise judgements")[1]
    for c in found:
        wins = sum(len(r["reply_x"].split()) > len(r["reply_y"].split()) for r in c["records"])
        losses = sum(len(r["reply_x"].split()) < len(r["reply_y"].split()) for r in c["records"])
        assert (c["rates"]["wins"], c["rates"]["losses"], c["rates"]["unparsable"]) == (wins, losses, 0)
        n = c["rates"]["n"]
        assert f"| {c['x']} | {c['y']} | 0 | {n} | {wins / n:.2f} [" in summary
    # the prompted reference got the persona prompt on the 3 messages, and the 2 probes as written
    persona = yaml.safe_load((ROOT / "configs" / "tasks" / "tone-rude.yaml").read_text())["prompt_variants"]
    persona = {"role": "system", "content": persona["persona_prompt"]["system"]}
    assert sum(r["messages"][0] == persona for r in judged) == 3
    assert sum([m["role"] for m in r["messages"]] == ["user"] for r in judged) == 2

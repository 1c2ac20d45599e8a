"""Merging an adapter into its base gives a plain checkpoint that answers like the adapter."""

from __future__ import annotations

import json
from pathlib import Path

from ftscale.chatdata import read_jsonl
from ftscale.eval.backends import Request, Sampling, make_backend
from ftscale.train.merge import merge


def test_merged_checkpoint_answers_like_the_adapter(trained_run, tmp_path):
    default = merge(trained_run, tmp_path / "merged-bf16")
    config = json.loads((default / "config.json").read_text())
    assert config["model_type"] == "llama" and config["dtype"] == "bfloat16"  # the base checkpoint's dtype
    assert (default / "model.safetensors").is_file() and (default / "tokenizer.json").is_file()
    assert not (default / "adapter_config.json").exists()
    merged = merge(trained_run, tmp_path / "merged-fp32", dtype="float32")
    examples = read_jsonl("data/formatting/eval.jsonl", "eval")[:8]
    requests = [Request(e["id"], e["messages"]) for e in examples]
    sampling = Sampling(max_new_tokens=64)
    # fp32 on both sides and fp32 merged weights: only the order of the additions differs
    lora = make_backend("hf", model="smollm2-135m", adapter=str(trained_run / "adapter"), dtype="float32", progress=False)
    plain = make_backend("hf", model=str(merged), dtype="float32", progress=False)
    same = sum(a.text == b.text for a, b in zip(lora.generate(requests, sampling), plain.generate(requests, sampling)))
    assert same >= 7, same


def test_merged_beside_writes_once_next_to_the_run(trained_run):
    from ftscale.train.merge import merged_beside

    first = merged_beside(trained_run / "adapter")
    assert first == trained_run / "merged" and (first / "model.safetensors").is_file()
    stamp = (first / "model.safetensors").stat().st_mtime_ns
    assert merged_beside(trained_run) == first  # a run directory works too, and nothing is merged again
    assert (first / "model.safetensors").stat().st_mtime_ns == stamp


def _tree(path):
    return sorted((str(p.relative_to(path)), p.stat().st_mtime_ns) for p in path.rglob("*"))


def _merge_cli(capsys, *args):
    from ftscale.cli import main

    code = main(["merge", *map(str, args)])
    return code, capsys.readouterr().err


def test_merge_refuses_a_folder_it_did_not_write_even_with_force(trained_run, tmp_path, capsys):
    """A run, its experiment, the working directory or any folder of the user's: exit 2, nothing touched."""
    import os

    user = tmp_path / "mine"
    user.mkdir()
    (user / "notes.txt").write_text("keep me")
    before = {p: _tree(p) for p in (user, trained_run, trained_run.parent)}
    for out, says in ((user, "not written by `ftscale merge`"), (trained_run, "holds the adapter's run"),
                      (trained_run.parent, "holds the adapter's run"), (trained_run / "adapter", "holds the adapter's run"),
                      (Path(os.curdir), "not written by `ftscale merge`")):
        for force in ([], ["--force"]):
            code, err = _merge_cli(capsys, trained_run, "--out", out, *force)
            assert code == 2 and says in err and err.count("\n") == 1, (out, err)
    assert {p: _tree(p) for p in before} == before
    assert not list(tmp_path.glob(".*"))  # no temporary merge folder was even started


def test_merge_replaces_only_its_own_earlier_output_with_force(trained_run, tmp_path, capsys):
    out = tmp_path / "merged"
    code, _ = _merge_cli(capsys, trained_run, "--out", out)
    manifest = json.loads((out / "ftscale-merged.json").read_text())
    assert code == 0 and "model.safetensors" in manifest["files"] and "config.json" in manifest["files"]
    first = _tree(out)
    code, err = _merge_cli(capsys, trained_run, "--out", out)  # again without --force: refused, kept
    assert code == 2 and "pass --force to replace it" in err and _tree(out) == first
    code, _ = _merge_cli(capsys, trained_run, "--out", out, "--force")
    assert code == 0 and _tree(out) != first and (out / "model.safetensors").is_file()
    (out / "my-eval.json").write_text("{}")  # the user's own file beside the merge: never deleted
    code, err = _merge_cli(capsys, trained_run, "--out", out, "--force")
    assert code == 2 and "my-eval.json" in err and (out / "my-eval.json").read_text() == "{}"

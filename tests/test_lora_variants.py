"""PEFT's LoRA variants through `train.lora`: each trains the embedded model for one step and its
saved adapter says what it is; what PEFT refuses is refused when the config loads, naming the key.
(LoftQ quantises with bitsandbytes on a GPU: its refusal here is in tests/test_train_options.py.)
What vLLM cannot serve (DoRA, PiSSA/OLoRA/LoftQ, modules_to_save) is refused before any work wherever
vLLM will serve the adapter (ftscale/vllm_compat.py), and every knob is part of the training's identity."""

from __future__ import annotations

import json

import pytest

from ftscale.config import load_config
from ftscale.errors import ConfigError
from ftscale.train.sft import train

from conftest import MAIN_CONFIG, ROOT

TINY = {"num_train_examples": "4", "train.epochs": "1", "train.batch_size": "4"}


# (override, what the saved adapter_config.json says, what vLLM's refusal names or None where vLLM serves it)
VARIANTS = [
    ({"train.lora.use_dora": "true"}, {"use_dora": True}, "vLLM does not serve DoRA"),
    ({"train.lora.use_rslora": "true"}, {"use_rslora": True}, None),
    ({"train.lora.init_lora_weights": "gaussian"}, {"init_lora_weights": "gaussian"}, None),
    ({"train.lora.init_lora_weights": "pissa"}, {"init_lora_weights": "pissa"}, "pissa rewrites the base weights"),
    ({"train.lora.init_lora_weights": "olora"}, {"init_lora_weights": "olora"}, "olora rewrites the base weights"),
    ({"train.lora.modules_to_save": "[lm_head]"}, {"modules_to_save": ["lm_head"]}, "modules_to_save: ['lm_head']"),
]


@pytest.mark.parametrize("override, saved, refused", VARIANTS)
def test_each_variant_trains_and_its_adapter_says_so(embedded_model, tmp_path, override, saved, refused, capsys):
    from ftscale.cli import main
    from ftscale.vllm_compat import adapter_refusal, vllm_refusal

    cfg = load_config(MAIN_CONFIG, TINY | override)
    metrics = train(cfg, 4, tmp_path / "run")
    assert metrics["steps"] == 1
    config = json.loads((tmp_path / "run" / "adapter" / "adapter_config.json").read_text())
    for key, value in saved.items():
        assert config[key] == value, (key, config[key])
    assert config["target_modules"] and config["r"] == cfg.train.lora.r
    # the config and the adapter PEFT saved from it get the same answer from vLLM's rules
    assert vllm_refusal(cfg.train.lora) == adapter_refusal(tmp_path / "run")
    if refused is None:
        assert adapter_refusal(tmp_path / "run") is None
        return
    assert refused in adapter_refusal(tmp_path / "run")
    # asked to evaluate it through vLLM: refused in one line before any server starts or anything is written
    code = main(["eval", "--config", str(MAIN_CONFIG), "--backend", "vllm", "--adapter", str(tmp_path / "run"),
                 "--output-dir", str(tmp_path / "vllm-eval")])
    err = capsys.readouterr().err
    assert code == 2 and refused in err and "--backend vllm serves the adapter as a LoRA module" in err, err
    assert not (tmp_path / "vllm-eval").exists()


@pytest.mark.parametrize("lora, says", [
    ({"use_dora": True}, "lora.use_dora: vLLM does not serve DoRA adapters; train a plain LoRA (use_dora: false) or merge it first"),
    ({"init_lora_weights": "pissa"}, "path_initial_model_for_weight_conversion"),
    ({"init_lora_weights": "olora"}, "path_initial_model_for_weight_conversion"),
    ({"init_lora_weights": "loftq"}, "lora.init_lora_weights: loftq rewrites the base weights"),
    ({"init_lora_weights": "pissa_niter_4"}, "pissa_niter_4 rewrites the base weights"),
    ({"init_lora_weights": "corda"}, "vLLM serves only adapters of a plain initialisation"),
    ({"modules_to_save": ["lm_head"]}, "lora.modules_to_save: ['lm_head']"),
    ({"modules_to_save": ["score", "embed_tokens"]}, "lora.modules_to_save: ['embed_tokens']"),
    ({}, None), ({"init_lora_weights": True}, None), ({"init_lora_weights": False}, None),
    ({"init_lora_weights": "gaussian", "use_rslora": True}, None), ({"modules_to_save": ["score"]}, None),
])
def test_vllm_refusal_names_the_key_why_and_what_works(lora, says):
    """The rules of vLLM's peft_helper, on a saved adapter's config (a dict) as on a `train.lora` section."""
    from ftscale.config import LoraSpec
    from ftscale.vllm_compat import MERGE_FIRST, vllm_refusal

    why = vllm_refusal(lora)
    if says is None:
        assert why is None
        return
    assert says in why and MERGE_FIRST in why and "\n" not in why
    spec = {k: ("default" if v is True else v) for k, v in lora.items()}
    if spec.get("init_lora_weights", "default") in ("default", "gaussian", "pissa", "olora", "loftq") and \
            spec.get("modules_to_save") != ["score", "embed_tokens"]:
        assert vllm_refusal(LoraSpec.model_construct(**spec)) == why  # a config's section: the same line


@pytest.mark.parametrize("override", ["use_dora: true", "init_lora_weights: olora", "modules_to_save: [lm_head]"])
def test_a_sweep_evaluated_through_vllm_refuses_what_vllm_cannot_serve_at_load(tmp_path, override):
    from ftscale.sweepconfig import load_sweep

    key, value = override.split(": ")
    base = (ROOT / "configs" / "sweeps" / "formatting-cpu.yaml").read_text()
    text = base.replace("  eval.limit: 100", f"  eval.limit: 100\n  train.lora.{key}: \"{value}\"")
    assert text != base
    served = tmp_path / "served.yaml"
    served.write_text(text.replace("eval_backend: hf", "eval_backend: vllm"))
    with pytest.raises(ConfigError, match=rf"served.yaml: eval_backend vllm serves each adapter as a LoRA module: "
                                          rf"train.lora.{key}"):
        load_sweep(served)
    in_process = tmp_path / "in-process.yaml"
    in_process.write_text(text)
    sweep, base_cfg = load_sweep(in_process)  # in-process evaluation runs every variant
    assert getattr(base_cfg.train.lora, key) not in (False, None, "default")


# what a training's identity is made of: each knob away from its default gives another digest
KNOBS = [{"train.lora.use_dora": "true"}, {"train.lora.use_rslora": "true"},
         {"train.lora.init_lora_weights": "gaussian"}, {"train.lora.init_lora_weights": "olora"},
         {"train.lora.modules_to_save": "[lm_head]"}, {"train.quantization": "4bit"}]


def test_every_lora_variant_knob_changes_the_training_digest_and_defaults_keep_older_records():
    """A DoRA (or rsLoRA, PiSSA, modules_to_save, QLoRA) config never reuses a plain LoRA's adapter; a
    config at the defaults has the digest a record made before these knobs existed names."""
    from ftscale import completion
    from ftscale.chatdata import read_jsonl
    from ftscale.stepinputs import LATER_LORA_KNOBS, train_inputs

    default = load_config(MAIN_CONFIG)
    pool = read_jsonl(default.data.train, "train")
    digest = completion.digest(train_inputs(default, 25, pool))
    seen = {digest}
    for knob in KNOBS:
        changed = completion.digest(train_inputs(load_config(MAIN_CONFIG, knob), 25, pool))
        assert changed not in seen, knob
        seen.add(changed)
    # explicitly set to its default, each knob leaves the digest alone
    for key, value in (("use_dora", "false"), ("use_rslora", "false"), ("init_lora_weights", "default"),
                       ("modules_to_save", "null")):
        assert completion.digest(train_inputs(load_config(MAIN_CONFIG, {f"train.lora.{key}": value}), 25, pool)) == digest
    assert completion.digest(train_inputs(load_config(MAIN_CONFIG, {"train.quantization": "none"}), 25, pool)) == digest
    # an older record's inputs: the train section as it was dumped before the knobs (none of their keys)
    lora = train_inputs(default, 25, pool)["train"]["lora"]
    assert not set(LATER_LORA_KNOBS) & set(lora) and {"r", "alpha", "dropout", "target_modules"} <= set(lora)
    older = default.train.model_dump(mode="json")
    older["lora"] = {k: v for k, v in older["lora"].items() if k not in LATER_LORA_KNOBS}
    assert completion.digest(train_inputs(default, 25, pool) | {"train": older}) == digest


@pytest.mark.parametrize("override, says", [
    ({"train.lora.init_lora_weights": "pissa", "train.quantization": "4bit"},
     "lora.init_lora_weights: pissa needs the full-precision base"),
    ({"train.lora.init_lora_weights": "loftq", "train.quantization": "4bit"},
     "lora.init_lora_weights: loftq needs the full-precision base"),
    ({"train.lora.init_lora_weights": "svd"}, "train.lora.init_lora_weights"),
])
def test_refused_at_load_naming_the_key(override, says):
    with pytest.raises(ConfigError, match=says):
        load_config(MAIN_CONFIG, override)

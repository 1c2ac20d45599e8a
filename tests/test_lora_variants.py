"""PEFT's LoRA variants through `train.lora`: each trains the embedded model for one step and its
saved adapter says what it is; what PEFT refuses is refused when the config loads, naming the key.
(LoftQ quantises with bitsandbytes on a GPU: its refusal here is in tests/test_train_options.py.)"""

from __future__ import annotations

import json

import pytest

from ftscale.config import load_config
from ftscale.errors import ConfigError
from ftscale.train.sft import train

from conftest import MAIN_CONFIG

TINY = {"num_train_examples": "4", "train.epochs": "1", "train.batch_size": "4"}


@pytest.mark.parametrize("override, saved", [
    ({"train.lora.use_dora": "true"}, {"use_dora": True}),
    ({"train.lora.use_rslora": "true"}, {"use_rslora": True}),
    ({"train.lora.init_lora_weights": "gaussian"}, {"init_lora_weights": "gaussian"}),
    ({"train.lora.init_lora_weights": "pissa"}, {"init_lora_weights": "pissa"}),
    ({"train.lora.init_lora_weights": "olora"}, {"init_lora_weights": "olora"}),
    ({"train.lora.modules_to_save": "[lm_head]"}, {"modules_to_save": ["lm_head"]}),
])
def test_each_variant_trains_and_its_adapter_says_so(embedded_model, tmp_path, override, saved):
    cfg = load_config(MAIN_CONFIG, TINY | override)
    metrics = train(cfg, 4, tmp_path / "run")
    assert metrics["steps"] == 1
    config = json.loads((tmp_path / "run" / "adapter" / "adapter_config.json").read_text())
    for key, value in saved.items():
        assert config[key] == value, (key, config[key])
    assert config["target_modules"] and config["r"] == cfg.train.lora.r


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

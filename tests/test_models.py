"""Model references and the embedded default model."""

from __future__ import annotations

import json

import pytest

from ftscale import models
from ftscale.errors import FtscaleError


def test_prepared_model_is_a_plain_transformers_checkpoint(embedded_model):
    path = models.local_dir(embedded_model)
    config = json.loads((path / "config.json").read_text())
    assert config["model_type"] == "llama" and "quantization_config" not in config
    assert (path / "model.safetensors").is_file() and (path / "tokenizer.json").is_file()
    assert "<|im_start|>" in (path / "chat_template.jinja").read_text()
    manifest = json.loads((path / models.MANIFEST).read_text())
    assert manifest["gguf_sha256"] == models.load_spec(embedded_model).gguf.sha256
    assert manifest["smoke_test_output"].strip()


def test_second_prepare_does_nothing(embedded_model):
    path = models.local_dir(embedded_model)
    before = (path / "model.safetensors").stat().st_mtime_ns
    messages = []
    assert models.prepare(embedded_model, log=messages.append) == path
    assert "already prepared" in messages[0]
    assert (path / "model.safetensors").stat().st_mtime_ns == before


def test_references_resolve(embedded_model, tmp_path):
    assert models.resolve(embedded_model) == str(models.local_dir(embedded_model))
    assert models.resolve(str(models.local_dir(embedded_model))) == str(models.local_dir(embedded_model).resolve())
    assert models.resolve("qwen2.5-0.5b") == "Qwen/Qwen2.5-0.5B-Instruct"  # a registry name for a hub model
    assert models.resolve("HuggingFaceTB/SmolLM2-360M-Instruct") == "HuggingFaceTB/SmolLM2-360M-Instruct"
    with pytest.raises(FtscaleError, match="no such directory"):
        models.resolve(str(tmp_path / "missing"))


def test_an_unprepared_model_says_how_to_prepare_it(monkeypatch, tmp_path):
    monkeypatch.setenv("FTSCALE_MODELS_DIR", str(tmp_path))
    with pytest.raises(FtscaleError, match="ftscale models prepare smollm2-135m"):
        models.resolve("smollm2-135m")

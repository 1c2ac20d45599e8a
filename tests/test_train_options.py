"""Training beyond one process and one default: data parallel on two CPU processes through the
shipped accelerate config, and the refusals of what this machine cannot run (before any loading)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from ftscale.config import load_config
from ftscale.errors import ConfigError
from ftscale.train.sft import check_hardware

from conftest import BIN, MAIN_CONFIG, ROOT


def test_data_parallel_on_two_cpu_processes(embedded_model, tmp_path):
    run_dir = tmp_path / "ddp"
    cmd = [str(BIN / "accelerate"), "launch", "--config_file", "configs/accelerate/cpu_ddp.yaml", "train/sft.py",
           "--config", str(MAIN_CONFIG), "--num_train_examples", "32", "--train.batch_size", "4",
           "--train.epochs", "1", "--output_dir", str(run_dir)]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    metrics = json.loads((run_dir / "train_metrics.json").read_text())
    assert metrics["world_size"] == 2 and metrics["distributed_type"] == "DistributedType.MULTI_CPU"
    # each process saw half the data: 32 examples / (4 per process x 2 processes) = 4 steps, not 8
    assert metrics["steps"] == 4
    # different data on each process, the same adapter on both at the end: gradients were averaged
    assert metrics["replicas_identical"] is True
    # one adapter, written once, whole
    assert sorted(p.name for p in (run_dir / "adapter").iterdir()) == [
        "README.md", "adapter_config.json", "adapter_model.safetensors"]
    assert not list(run_dir.glob(".adapter*")) and proc.stdout.count("adapter saved to") == 1


@pytest.mark.parametrize("override, module, without_cuda, without_module", [
    ({"train.attn_implementation": "flash_attention_2"}, "flash_attn", "flash_attention_2 needs a CUDA GPU",
     "flash_attention_2 needs the flash_attn package"),
    ({"train.use_liger_kernel": "true"}, "liger_kernel", "Liger's kernels are Triton kernels for CUDA GPUs",
     "needs liger-kernel: pip install liger-kernel"),
    ({"train.optim": "paged_adamw_8bit"}, "bitsandbytes", "paged_adamw_8bit needs a CUDA GPU and bitsandbytes",
     "paged_adamw_8bit needs a CUDA GPU and bitsandbytes"),
    ({"train.lora.init_lora_weights": "loftq"}, "bitsandbytes", "loftq needs a CUDA GPU and bitsandbytes",
     "loftq needs a CUDA GPU and bitsandbytes"),
])
def test_what_this_machine_cannot_run_is_refused_before_loading(override, module, without_cuda, without_module):
    """Without CUDA refused; on CUDA refused only without the package, else accepted (training
    with each option on a GPU is `ftscale doctor --gpu`'s job: minutes, not a test's seconds)."""
    import importlib.util

    import torch

    cfg = load_config(MAIN_CONFIG, override)
    if torch.cuda.is_available() and importlib.util.find_spec(module) is not None:
        check_hardware(cfg)  # accepted: no error
        return
    message = without_module if torch.cuda.is_available() else without_cuda
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        check_hardware(cfg)


def test_qlora_needs_bitsandbytes_and_no_gpu(monkeypatch):
    """bitsandbytes runs nf4 layers on the CPU too: QLoRA is accepted wherever it is installed, and
    refused, naming the extra that installs it, where it is not."""
    import importlib.util

    cfg = load_config(MAIN_CONFIG, {"train.quantization": "4bit"})
    if importlib.util.find_spec("bitsandbytes") is not None:
        check_hardware(cfg)  # accepted: no error, with or without CUDA
    monkeypatch.setitem(sys.modules, "bitsandbytes", None)  # imports of it blocked: as if not installed
    with pytest.raises(ConfigError, match=r"4bit \(QLoRA\) needs bitsandbytes: pip install -e '\.\[qlora\]'"):
        check_hardware(cfg)


@pytest.mark.parametrize("env, message", [
    ("ACCELERATE_USE_FSDP", "FSDP, which ftscale runs on CUDA GPUs only"),
    ("ACCELERATE_USE_DEEPSPEED", "DeepSpeed, which is not installed: pip install deepspeed"),
])
def test_an_accelerate_config_this_machine_cannot_run_is_refused(env, message, monkeypatch):
    """Refused where the machine lacks what it needs (CUDA for FSDP, the package for DeepSpeed), accepted where it has it."""
    import importlib.util

    import torch

    monkeypatch.setenv(env, "true")
    able = torch.cuda.is_available() if env == "ACCELERATE_USE_FSDP" else importlib.util.find_spec("deepspeed") is not None
    if able:
        check_hardware(load_config(MAIN_CONFIG))  # accepted: no error
        return
    with pytest.raises(ConfigError, match=message):
        check_hardware(load_config(MAIN_CONFIG))


def test_an_unknown_attention_implementation_is_a_config_error():
    with pytest.raises(ConfigError, match="train.attn_implementation: Input should be"):
        load_config(MAIN_CONFIG, {"train.attn_implementation": "flash"})


@pytest.mark.parametrize("fsdp", [False, True])
def test_qlora_loads_one_copy_per_process_and_under_fsdp_as_peft_guide_does(fsdp, monkeypatch):
    """DDP / one GPU: the 4-bit model on this process's GPU. FSDP: no device_map (FSDP places and
    shards it), and the rest of the model in the 4-bit storage dtype, so FSDP sees one float dtype."""
    import torch

    from ftscale.train.sft import load_kwargs

    if fsdp:
        monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    else:
        monkeypatch.delenv("ACCELERATE_USE_FSDP", raising=False)
    kwargs = load_kwargs(load_config(MAIN_CONFIG, {"train.quantization": "4bit"}))
    quant = kwargs["quantization_config"]
    assert quant.load_in_4bit and quant.bnb_4bit_quant_type == "nf4" and quant.bnb_4bit_use_double_quant
    assert quant.bnb_4bit_quant_storage == quant.bnb_4bit_compute_dtype == kwargs["dtype"] == torch.bfloat16
    # the process's GPU, or the CPU, where bitsandbytes runs nf4 layers too
    assert kwargs.get("device_map") == (None if fsdp else {"": 0 if torch.cuda.is_available() else "cpu"})


def test_an_accelerate_launched_training_is_watched_and_checked_as_configured(tmp_path):
    """The cell's config leaves out what does not decide its results (tracking, the watchdog, the stop
    check); the config a sweep hands to `accelerate launch` carries them, and loads back as set."""
    import yaml

    from ftscale.cellrunner import launch_config

    cfg = load_config(MAIN_CONFIG, {"train.stop_check": "3", "train.report_to": "[tensorboard]",
                                    "train.watchdog.patience": "7"})
    assert "stop_check" not in yaml.safe_load(cfg.cell_yaml(25))["train"]
    path = tmp_path / "launch-config.yaml"
    path.write_text(yaml.safe_dump(launch_config(cfg, 25)))
    launched = load_config(path).train
    assert (launched.stop_check, launched.report_to, launched.watchdog.patience) == (3, ["tensorboard"], 7)

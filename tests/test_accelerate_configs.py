"""configs/accelerate/*.yaml load with accelerate's own loader and say how to launch themselves.

No training here: each file is read by accelerate's config loader (which refuses unknown top-level
keys), its fsdp_config / deepspeed_config keys are checked against the options of
`accelerate launch` (the loader does not look inside them, and launch would ignore a misspelt one),
and its first line must be the `accelerate launch --config_file <this file> train/sft.py ...` line
that runs the main job's config with it.
"""

from __future__ import annotations

import shlex
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
CONFIG_DIR = ROOT / "configs" / "accelerate"
FILES = sorted(CONFIG_DIR.glob("*.yaml"))
EXPECTED = {"single_gpu.yaml", "multi_gpu.yaml", "fsdp.yaml", "fsdp_qlora.yaml", "deepspeed_zero3.yaml", "cpu_ddp.yaml"}


def _ids(files):
    return [f.name for f in files]


def test_the_documented_configs_exist():
    assert EXPECTED <= {f.name for f in FILES}


@pytest.mark.parametrize("path", FILES, ids=_ids(FILES))
def test_loads_with_accelerates_loader(path):
    from accelerate.commands.config.config_args import ClusterConfig, load_config_from_file
    from accelerate.utils import ComputeEnvironment

    cfg = load_config_from_file(str(path))  # what `accelerate launch --config_file` calls
    assert isinstance(cfg, ClusterConfig)
    assert cfg.compute_environment == ComputeEnvironment.LOCAL_MACHINE
    assert cfg.num_processes >= 1 and cfg.num_machines == 1


@pytest.mark.parametrize("path", FILES, ids=_ids(FILES))
def test_nested_keys_are_launch_options(path):
    from accelerate.commands.launch import launch_command_parser

    options = {a.dest for a in launch_command_parser()._actions}
    data = yaml.safe_load(path.read_text())
    # accelerate launch copies fsdp_config.x to the option fsdp_x, deepspeed_config.x to x
    keys = [k if k.startswith("fsdp_") else f"fsdp_{k}" for k in data.get("fsdp_config") or {}]
    keys += list(data.get("deepspeed_config") or {})
    unknown = sorted(set(keys) - options)
    assert not unknown, f"{path.name}: accelerate launch has no option for {unknown}"


@pytest.mark.parametrize("path", FILES, ids=_ids(FILES))
def test_header_launches_this_file(path):
    first = path.read_text().splitlines()[0]
    assert first.startswith("# accelerate launch "), f"{path.name}: first line is not the launch command"
    argv = shlex.split(first[2:])
    assert argv[:2] == ["accelerate", "launch"]
    assert argv[argv.index("--config_file") + 1] == f"configs/accelerate/{path.name}"
    script = next(a for a in argv[2:] if a.endswith(".py"))
    assert script == "train/sft.py" and (ROOT / script).is_file()
    experiment = argv[argv.index("--config") + 1]
    assert (ROOT / experiment).is_file(), f"{path.name}: {experiment} does not exist"
    assert argv[argv.index("--num_train_examples") + 1] == "100"


def test_fsdp_configs_are_lora_ready():
    fsdp = yaml.safe_load((CONFIG_DIR / "fsdp.yaml").read_text())
    qlora = yaml.safe_load((CONFIG_DIR / "fsdp_qlora.yaml").read_text())
    for name, cfg in (("fsdp.yaml", fsdp), ("fsdp_qlora.yaml", qlora)):
        f = cfg["fsdp_config"]
        assert cfg["distributed_type"] == "FSDP", name
        assert f["fsdp_reshard_after_forward"] == "FULL_SHARD", name
        assert f["fsdp_auto_wrap_policy"] == "TRANSFORMER_BASED_WRAP", name
        # rank 0 reads the checkpoint; accelerate refuses this without sync_module_states (FSDP1)
        assert f["fsdp_cpu_ram_efficient_loading"] and f["fsdp_sync_module_states"], name
    assert fsdp["fsdp_config"]["fsdp_use_orig_params"] is True
    # QLoRA: bf16 mixed precision, matching the 4-bit base's bf16 quant storage that sft.py trains on
    assert qlora["mixed_precision"] == "bf16"
    assert "--train.quantization 4bit" in (CONFIG_DIR / "fsdp_qlora.yaml").read_text().splitlines()[0]
    import torch

    from ftscale.quantization import bnb_config

    assert bnb_config().bnb_4bit_quant_storage == torch.bfloat16, "fsdp_qlora.yaml assumes bf16 quant storage"
    assert "bnb_config()" in (ROOT / "train" / "sft.py").read_text(), "sft.py must load the 4-bit base from it"


def test_cpu_ddp_starts_two_processes():
    """accelerate starts a MULTI_CPU config as one process unless mpirun is configured: check the
    launcher this file picks, the way `accelerate launch` decides it."""
    from accelerate.commands import launch

    path = CONFIG_DIR / "cpu_ddp.yaml"
    cfg = yaml.safe_load(path.read_text())
    assert cfg["use_cpu"] is True and cfg["num_processes"] == 2
    validate = getattr(launch, "_validate_launch_command", None)
    if validate is None:
        pytest.skip("this accelerate has no _validate_launch_command to ask which launcher it would use")
    args = launch.launch_command_parser().parse_args(["--config_file", str(path), "train/sft.py"])
    args = validate(args)[0]
    multi_process = args.multi_gpu or bool(getattr(args, "mpirun_hostfile", None))
    assert multi_process and args.num_processes == 2, (
        "accelerate would start cpu_ddp.yaml as a single process (a MULTI_CPU config without mpirun does that)")

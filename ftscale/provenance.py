"""What a run directory records about where its numbers came from."""

from __future__ import annotations

import os
import platform
import subprocess
from importlib import metadata

from . import paths

PACKAGES = ("ftscale", "torch", "transformers", "trl", "peft", "accelerate", "datasets", "bitsandbytes", "vllm", "openai")


def versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return out


def git_commit() -> str | None:
    """The checkout's commit, with `+dirty` when it has uncommitted changes."""
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=paths.ROOT, capture_output=True, text=True, check=True).stdout.strip()
        # GIT_OPTIONAL_LOCKS=0: `git status` would otherwise refresh the index under .git/index.lock, and a
        # run killed at that moment would leave the user's repository locked for every later git command
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=paths.ROOT,
                               capture_output=True, text=True, env=os.environ | {"GIT_OPTIONAL_LOCKS": "0"}).stdout.strip()
        return sha + ("+dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return None


def machine() -> dict:
    import torch

    info = {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
            "cpu_threads": torch.get_num_threads()}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
        info["gpu_count"] = torch.cuda.device_count()
    return info

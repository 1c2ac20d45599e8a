"""tcmalloc under the `ftscale` command, which trains and generates on the CPU.

glibc's malloc hands the large blocks of a CPU step (activations, logits) back to the kernel and
faults them in again at the next step: a one-thread training of the embedded model spent a fifth of
its time in the kernel doing that. tcmalloc keeps them. PyTorch's CPU launcher
(`torch.backends.xeon.run_cpu`) and vLLM's CPU guide preload it the same way, with LD_PRELOAD,
which must be set before the process starts: so `ftscale` executes itself again, once, with it set.
Every process it starts (the cell processes of `--jobs`, `accelerate launch`, vLLM) inherits it.
Only the allocator changes, not the arithmetic: the same answers and byte-identical adapters
(docs/benchmarks.md).

Linux only, where the library is installed (Debian's libtcmalloc-minimal4: `make setup` installs
it); elsewhere nothing changes. FTSCALE_MALLOC=system keeps glibc's allocator.
"""

from __future__ import annotations

import ctypes.util
import os
import sys

from .errors import FtscaleError

LIBRARIES = ("tcmalloc_minimal", "tcmalloc")  # Debian's libtcmalloc-minimal4, then gperftools' full one
CHOICES = ("tcmalloc", "system")
# what the re-execution added to LD_PRELOAD, so that a program that must run as the user started it
# (the bench's baseline) gets it taken off again
ADDED = "FTSCALE_PRELOADED"


def library() -> str | None:
    """The installed tcmalloc's name as the dynamic loader finds it, or None."""
    return next((found for name in LIBRARIES if (found := ctypes.util.find_library(name))), None)


def _preloads(env) -> list[str]:
    """LD_PRELOAD's entries (the dynamic loader separates them by colons or spaces)."""
    return [p for p in env.get("LD_PRELOAD", "").replace(" ", ":").split(":") if p]


def preloaded(env) -> str | None:
    """The tcmalloc already in `env`'s LD_PRELOAD, if any."""
    return next((p for p in _preloads(env) if "tcmalloc" in p), None)


def choice(env) -> str:
    value = env.get("FTSCALE_MALLOC", "tcmalloc")
    if value not in CHOICES:
        raise FtscaleError(f"FTSCALE_MALLOC={value}: give tcmalloc (the default) or system")
    return value


def wanted(env) -> str | None:
    """tcmalloc's library where a process started with `env` should have it added: on Linux, not
    declined, not loaded yet, and installed."""
    if not sys.platform.startswith("linux") or choice(env) == "system" or preloaded(env):
        return None
    return library()


def preload(env) -> str:
    """LD_PRELOAD for a process started with `env`: the user's own, with tcmalloc in front where wanted."""
    return ":".join(filter(None, [wanted(env), env.get("LD_PRELOAD")]))


def reexec() -> None:
    """Replace this process by the same command line (the interpreter's own options included) with
    tcmalloc preloaded, where it is wanted; otherwise return."""
    lib = wanted(os.environ)
    if lib is None:
        return
    env = dict(os.environ, LD_PRELOAD=preload(os.environ), **{ADDED: lib})
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], env)


def in_effect(env) -> str:
    """The allocator a `ftscale` command started with `env` runs on: tcmalloc's library, or "system"."""
    return preloaded(env) or wanted(env) or "system"


def without_added(env: dict) -> dict:
    """`env` less what `reexec` added to it."""
    added = env.get(ADDED)
    if not added:
        return dict(env)
    rest = [p for p in _preloads(env) if p != added]
    out = {k: v for k, v in env.items() if k not in (ADDED, "LD_PRELOAD")}
    return out | ({"LD_PRELOAD": ":".join(rest)} if rest else {})

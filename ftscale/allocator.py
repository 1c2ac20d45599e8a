"""tcmalloc under the `ftscale` command, which trains and generates on the CPU.

glibc's malloc hands the large blocks of a CPU step (activations, logits) back to the kernel and
faults them in again at the next step: a one-thread training of the embedded model spent a fifth of
its time in the kernel doing that. tcmalloc keeps them. PyTorch's CPU launcher
(`torch.backends.xeon.run_cpu`) and vLLM's CPU guide preload it the same way, with LD_PRELOAD,
which must be set before the process starts: so `ftscale` executes itself again, once, with it set.
Every process it starts (the cell processes of `--jobs`, `accelerate launch`, vLLM) inherits it.
Only the allocator changes, not the arithmetic: the same answers and byte-identical adapters
(docs/benchmarks.md).

Only the command executes itself again: its console script or `python -m ftscale`, never a program or
notebook calling `cli.main()` (its command line executed again would start that program again). A user's
own LD_PRELOAD (AddressSanitizer, another allocator) is left exactly as it is, and `ftscale doctor`
says so. The library is preloaded by its absolute path from the loader's cache of the system's
library folders, never looked up through LD_LIBRARY_PATH.

Linux only, where the library is installed (Debian's libtcmalloc-minimal4: `make setup` installs
it); elsewhere nothing changes. FTSCALE_MALLOC=system keeps glibc's allocator.
"""

from __future__ import annotations

import functools
import os
import re
import subprocess
import sys
from pathlib import Path

from .errors import FtscaleError

LIBRARIES = ("tcmalloc_minimal", "tcmalloc")  # Debian's libtcmalloc-minimal4, then gperftools' full one
CHOICES = ("tcmalloc", "system")
# what the re-execution added to LD_PRELOAD, so that a program that must run as the user started it
# (the bench's baseline) gets it taken off again
ADDED = "FTSCALE_PRELOADED"


LDCONFIG = ("/sbin/ldconfig", "/usr/sbin/ldconfig")


def _elf_kind(path: str) -> bytes | None:
    """An ELF file's class, byte order and machine (so a 32-bit or foreign library is not taken), or None."""
    try:
        with open(path, "rb") as f:
            head = f.read(20)
    except OSError:
        return None
    return head[4:6] + head[18:20] if head[:4] == b"\x7fELF" and len(head) == 20 else None


@functools.lru_cache(maxsize=1)
def library() -> str | None:
    """The installed tcmalloc's absolute path, from the dynamic loader's cache of the system's library
    folders (`ldconfig -p`), for this interpreter's architecture; or None."""
    ldconfig = next((p for p in LDCONFIG if os.access(p, os.X_OK)), None)
    if ldconfig is None:
        return None
    try:
        listed = subprocess.run([ldconfig, "-p"], capture_output=True, text=True, timeout=10,
                                env={"LC_ALL": "C"}).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    found = re.findall(r"^\s+(\S+) \([^)]*\) => (/\S+)$", listed, re.MULTILINE)
    ours = _elf_kind(os.path.realpath(sys.executable))
    for name in LIBRARIES:
        for soname, path in found:
            if re.fullmatch(rf"lib{name}\.so(\.\d+)*", soname) and _elf_kind(path) == ours:
                return path
    return None


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
    declined, nothing preloaded already (the user's own LD_PRELOAD is left alone), and installed."""
    if not sys.platform.startswith("linux") or choice(env) == "system" or _preloads(env):
        return None
    return library()


def left_alone(env) -> str | None:
    """The user's own LD_PRELOAD, without tcmalloc, that keeps ftscale from adding it (for `doctor`), or None."""
    if not sys.platform.startswith("linux") or choice(env) == "system" or preloaded(env) or not _preloads(env):
        return None
    return env["LD_PRELOAD"]


def preload(env) -> str:
    """LD_PRELOAD for a process started with `env`: the user's own if there is one, else tcmalloc where wanted."""
    return ":".join(_preloads(env)) or wanted(env) or ""


def started_as_command() -> bool:
    """Whether this process is the `ftscale` command (its console script, or `python -m ftscale`), whose
    command line may be executed again; not a program, notebook or test that calls `cli.main()`."""
    main = sys.modules.get("__main__")
    spec = getattr(main, "__spec__", None)
    if spec is not None:
        return spec.name == "ftscale.__main__"
    script = getattr(main, "__file__", None)
    return script is not None and Path(script).name == "ftscale"


def reexec() -> None:
    """Replace this process by the same command line (the interpreter's own options included) with
    tcmalloc preloaded, where it is wanted and this process is the `ftscale` command; otherwise return."""
    lib = wanted(os.environ)
    if lib is None or not started_as_command():
        return
    env = dict(os.environ, LD_PRELOAD=lib, **{ADDED: lib})
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

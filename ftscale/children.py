"""Child processes that never outlive ftscale, and stopping them on SIGTERM and SIGHUP as on Ctrl-C.

`spawn(cmd, ...)` starts a long child (a vLLM server and the engine processes it starts, an
`accelerate launch`ed training) in a session of its own, under a small guard process that is its
group's leader. The guard holds the read end of a pipe whose write end only this process holds; when
this process ends in any way, SIGKILL included, the kernel closes the pipe, and the guard stops the
whole group: SIGTERM, then SIGKILL after GRACE_S seconds. (PR_SET_PDEATHSIG would fire when the
forking *thread* exits, and reach only the one child, not the engine processes it starts.) `stop()`
stops such a group from here, the same way.

`exit_with_parent()`, called in a worker process ftscale starts (`ftscale run --jobs N`'s cell
processes), ends that worker when its parent is gone.

`signals_as_interrupt()` is what every command runs under (ftscale/errors.py `run_command`): SIGTERM (a
scheduler's time limit, `scancel`, `kill`) and SIGHUP (a closed terminal) are passed on to every child
and raise Terminated, a KeyboardInterrupt, so the command unwinds as on Ctrl-C: servers stopped,
finished steps kept, nothing left running.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import subprocess
import sys
import threading
import time

GRACE_S = 10.0
_STOPS = (signal.SIGTERM, signal.SIGHUP)
_pipes: dict[int, int] = {}  # guard pid -> the write end of its pipe


class Terminated(KeyboardInterrupt):
    """SIGTERM or SIGHUP reached the command: it unwinds as on Ctrl-C, and exits 128 + the signal."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


# -- a child group that dies with this process ----------------------------------------------------
def spawn(cmd: list[str], **popen) -> subprocess.Popen:
    """Start `cmd` (Popen's keyword arguments, but no start_new_session or pass_fds) in a new session
    under a guard. The Popen is the guard's: its pid is the group's id and its exit code the child's."""
    read_end, write_end = os.pipe()
    try:
        proc = subprocess.Popen([sys.executable, "-m", "ftscale.children", str(read_end), "--", *cmd],
                                start_new_session=True, pass_fds=(read_end,), **popen)
    except BaseException:
        os.close(write_end)
        raise
    finally:
        os.close(read_end)
    _pipes[proc.pid] = write_end
    return proc


def stop(proc: subprocess.Popen | None, timeout: float = 30.0) -> None:
    """Stop a group spawn() started, and any process that left it: SIGTERM, then SIGKILL what is left."""
    if proc is None:
        return
    import psutil  # imported here: `ftscale doctor` must run where psutil is not installed

    try:
        family = [psutil.Process(proc.pid), *psutil.Process(proc.pid).children(recursive=True)]
    except psutil.NoSuchProcess:
        family = []
    for sig in (signal.SIGTERM, signal.SIGKILL):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, sig)
        for p in family:  # a child that left the group is still ours to stop
            with contextlib.suppress(psutil.NoSuchProcess):
                p.send_signal(sig)
        _, alive = psutil.wait_procs(family, timeout=timeout if sig == signal.SIGTERM else 5)
        if not alive:
            break
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=5)
    fd = _pipes.pop(proc.pid, None)
    if fd is not None:
        os.close(fd)


def _guard(read_end: int, cmd: list[str]) -> int:
    """The guard: run `cmd` in this group; if the pipe closes (the parent is gone), stop the group."""
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):  # the group is stopped through the child
        signal.signal(sig, signal.SIG_IGN)
    child = subprocess.Popen(cmd, preexec_fn=_default_signals)
    while True:
        ready, _, _ = select.select([read_end], [], [], 0.5)
        if child.poll() is not None:
            return child.returncode if child.returncode >= 0 else 128 - child.returncode
        if ready and not os.read(read_end, 1):  # end of file: the parent exited, however it did
            os.killpg(0, signal.SIGTERM)
            deadline = time.monotonic() + GRACE_S
            while child.poll() is None and time.monotonic() < deadline:
                time.sleep(0.1)
            os.killpg(0, signal.SIGKILL)  # whatever is left of the group, the guard included
            return 1


def _default_signals() -> None:
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, signal.SIG_DFL)


# -- a worker that dies with its parent -----------------------------------------------------------
def exit_with_parent(interval_s: float = 0.5) -> None:
    """In a worker process: end it (and the processes it started) once its parent process is gone."""
    parent = os.getppid()

    def watch():
        while os.getppid() == parent:
            time.sleep(interval_s)
        terminate_descendants(grace_s=2.0)
        os._exit(1)

    threading.Thread(target=watch, name="ftscale-exit-with-parent", daemon=True).start()


_before: set[int] = set()  # children this process had before the command began: not the command's to stop


def terminate_descendants(grace_s: float = GRACE_S, sig: int = signal.SIGTERM) -> None:
    """Send `sig` to every process the command started (and theirs), then SIGKILL those left after grace_s."""
    try:
        import psutil
    except ImportError:
        return
    family = []
    for child in psutil.Process().children():
        if child.pid not in _before:
            with contextlib.suppress(psutil.NoSuchProcess):
                family += [child, *child.children(recursive=True)]
    family = [p for p in family if not _tracker(p)]
    for p in family:
        with contextlib.suppress(psutil.NoSuchProcess):
            p.send_signal(sig)
    if grace_s <= 0:
        return
    _, alive = psutil.wait_procs(family, timeout=grace_s)
    for p in alive:
        with contextlib.suppress(psutil.NoSuchProcess):
            p.kill()


def _tracker(p) -> bool:
    """multiprocessing's resource tracker: it ends by itself once this process is gone, and frees what
    the workers leave; a signal would only make it print a traceback."""
    try:
        return "multiprocessing.resource_tracker" in " ".join(p.cmdline())
    except Exception:  # noqa: BLE001 - gone, or not ours to read
        return False


# -- SIGTERM and SIGHUP as Ctrl-C -----------------------------------------------------------------
@contextlib.contextmanager
def signals_as_interrupt():
    """While the block runs (in the main thread): SIGTERM and SIGHUP are passed on to every child and
    raise Terminated. Later ones are ignored while the command unwinds; the old handlers come back after.
    Children this process had before (a notebook's, a test session's) are left alone."""
    with contextlib.suppress(ImportError):
        import psutil

        _before.update(p.pid for p in psutil.Process().children())
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        for sig in _STOPS:  # once: the unwinding (stopping servers, saving nothing half-done) is not cut short
            signal.signal(sig, signal.SIG_IGN)
        terminate_descendants(grace_s=0)  # SIGTERM, whichever signal came: every child stops on it
        raise Terminated(signum)

    before = {sig: signal.signal(sig, handler) for sig in _STOPS}
    try:
        yield
    finally:
        for sig, old in before.items():
            signal.signal(sig, old)


if __name__ == "__main__":  # the guard: python -m ftscale.children READ_FD -- CMD...
    sys.exit(_guard(int(sys.argv[1]), sys.argv[3:]))

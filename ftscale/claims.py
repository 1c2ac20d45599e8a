"""One writer per result: an exclusive claim on a folder, held as a lease.

`ftscale run` claims its experiment folder, `ftscale tune` its search folder, and a sweep each cell
it runs (the built-in loop and every scheduler job alike), so two processes never write one result.

A claim is a file in the folder's `.claim/` directory, `<generation>.json`, naming the host, the
process (pid and its start time) and when it was claimed. It is created whole and atomically:
written beside, then hard-linked into place, which fails if that generation exists (link is atomic
on NFS too, where O_EXCL once was not). The highest generation is the claim; a process takes a free
or dead claim by creating the next generation, so of two takers exactly one wins, and a taker that
finds a higher generation after its own has lost.

The owner renews its lease from a background thread (every LEASE/6 s) by touching the file (its
modification time; nothing else in the folder changes, so watching a folder sees only the work). A
claim is dead when:
- it was released;
- it names a process on this machine (same host, boot and pid namespace) that no longer runs;
- it names another machine and its lease ran out: touched more than LEASE ago by this machine's
  clock (cluster nodes keep their clocks in step), or watched by this process go untouched for a
  whole LEASE (whatever the clocks say). Whether a pid on another host is alive is never asked.
LEASE is FTSCALE_CLAIM_LEASE_S seconds (default 120). An owner that finds its generation overtaken
(it stalled longer than a lease) has lost the claim: `check()` raises ClaimLost before it writes
a result.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import threading
import time
import uuid
from pathlib import Path

from .errors import FtscaleError

DIR = ".claim"
DEFAULT_LEASE_S = 120.0


class Held(FtscaleError):
    """The folder is claimed by a live process; the message names it."""

    def __init__(self, message: str, holder: dict):
        super().__init__(message)
        self.holder = holder


class ClaimLost(FtscaleError):
    """Another process took this claim over (this one stalled for longer than a lease)."""


def lease_s() -> float:
    try:
        value = float(os.environ.get("FTSCALE_CLAIM_LEASE_S", DEFAULT_LEASE_S))
    except ValueError:
        raise FtscaleError("FTSCALE_CLAIM_LEASE_S: give a number of seconds") from None
    if value <= 0:
        raise FtscaleError("FTSCALE_CLAIM_LEASE_S: give a number of seconds above 0")
    return value


def _read_first_line(path: str) -> str:
    try:
        with open(path) as f:
            return f.readline().strip()
    except OSError:
        return ""


def node_id() -> str:
    """This machine and pid namespace: where a pid means the same process (containers share a host's
    boot id but not its pids)."""
    try:
        pidns = os.stat("/proc/self/ns/pid").st_ino
    except OSError:
        pidns = 0
    return f"{socket.gethostname()}|{_read_first_line('/proc/sys/kernel/random/boot_id')}|{pidns}"


def process_started(pid: int) -> float | None:
    """When process `pid` started (None if it does not run, or is a zombie): with the pid, it names one
    process even after the pid is reused."""
    import psutil  # imported here: `ftscale doctor` imports this module and must run without psutil

    try:
        p = psutil.Process(pid)
        if p.status() == psutil.STATUS_ZOMBIE:
            return None
        return round(p.create_time(), 2)
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return None


def describe(holder: dict) -> str:
    since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(holder.get("since", 0)))
    return f"{holder.get('what') or 'a process'} on {holder.get('host')}, pid {holder.get('pid')}, since {since}"


class Claim:
    """An exclusive claim on `folder` for `what` (e.g. "ftscale run"). `acquire()` takes it if it is free
    or dead, without waiting; `hold()` takes it or raises Held naming the holder."""

    def __init__(self, folder: str | Path, what: str = "ftscale"):
        self.folder = Path(folder)
        self.dir = self.folder / DIR
        self.what = what
        self.lease = lease_s()
        self.gen: int | None = None
        self.lost = False
        self._since = 0.0
        self._seen: dict[int, tuple[float, float]] = {}  # generation -> (renewal seen, when first seen unchanged)

    # -- reading ----------------------------------------------------------------------------------
    def _generations(self) -> list[int]:
        try:
            names = os.listdir(self.dir)
        except FileNotFoundError:
            return []
        return sorted(int(n[:-5]) for n in names if n.endswith(".json") and n[:-5].isdigit())

    def _path(self, gen: int) -> Path:
        return self.dir / f"{gen:010d}.json"

    def _read(self, gen: int) -> dict | None:
        """The record, with `renewed`: when its owner last touched it."""
        path = self._path(gen)
        try:
            return json.loads(path.read_text()) | {"renewed": path.stat().st_mtime}
        except (FileNotFoundError, json.JSONDecodeError):
            return None

    def _live(self, gen: int, rec: dict | None) -> bool:
        if rec is None or rec.get("released"):
            return False
        if rec.get("node") == node_id():  # a process of this machine: alive or not, no lease to wait out
            return process_started(rec["pid"]) == rec.get("pid_started")
        now = time.monotonic()
        renewed, first = self._seen.get(gen, (None, now))
        if renewed != rec["renewed"]:
            self._seen[gen] = (rec["renewed"], now)
            first = now
        return time.time() - rec["renewed"] < self.lease and now - first < self.lease

    def holder(self) -> dict | None:
        """The live claim's record, or None when the folder is free (or its claim is dead, or ours)."""
        gens = self._generations()
        if not gens or gens[-1] == self.gen:
            return None
        rec = self._read(gens[-1])
        return rec if self._live(gens[-1], rec) else None

    # -- taking, renewing, giving back ----------------------------------------------------------
    def _record(self, **extra) -> dict:
        pid = os.getpid()
        return {"what": self.what, "host": socket.gethostname(), "node": node_id(), "pid": pid,
                "pid_started": process_started(pid), "since": self._since, "lease_s": self.lease, **extra}

    def _write_beside(self, rec: dict) -> Path:
        tmp = self.dir / f".{uuid.uuid4().hex}.tmp"
        with open(tmp, "w") as f:
            f.write(json.dumps(rec) + "\n")
            f.flush()
            os.fsync(f.fileno())
        return tmp

    def acquire(self) -> bool:
        """Take the claim if it is free or dead; False (without waiting) while a live process holds it."""
        if self.gen is not None:
            return True
        self.dir.mkdir(parents=True, exist_ok=True)
        for _ in range(20):  # each round loses only to another taker that won
            gens = self._generations()
            top = gens[-1] if gens else -1
            if top >= 0 and self._live(top, self._read(top)):
                return False
            self._since = time.time()
            tmp = self._write_beside(self._record())
            try:
                os.link(tmp, self._path(top + 1))
            except FileExistsError:
                continue
            finally:
                tmp.unlink()
            if self._generations()[-1] != top + 1:  # a taker that saw a later generation already won
                with contextlib.suppress(FileNotFoundError):
                    self._path(top + 1).unlink()
                continue
            self.gen, self.lost = top + 1, False
            for old in gens:  # earlier generations are dead: only the newest is ever looked at
                with contextlib.suppress(FileNotFoundError):
                    self._path(old).unlink()
            _renewer.add(self)
            return True
        return False

    def hold(self) -> "Claim":
        """Take the claim or raise Held, naming who holds it."""
        if not self.acquire():
            holder = self.holder() or {}
            raise Held(f"{self.folder}: in use by {describe(holder)}; wait for it to finish or stop it "
                       f"(a claim whose process died is taken over at once on its machine, after "
                       f"{self.lease:.0f} s from another)", holder)
        return self

    def wait(self, poll_s: float = 2.0) -> "Claim":
        """Take the claim, waiting while a live process holds it."""
        while not self.acquire():
            time.sleep(poll_s)
        return self

    def renew(self) -> None:
        """Push the lease on (the renewing thread calls this); notice when the claim was taken over."""
        if self.gen is None or self.lost:
            return
        if self._generations()[-1:] != [self.gen]:
            self.lost = True
            return
        os.utime(self._path(self.gen))

    def check(self) -> None:
        """Raise ClaimLost if another process took this claim over."""
        if self.gen is not None and (self.lost or self._generations()[-1:] != [self.gen]):
            self.lost = True
            raise ClaimLost(f"{self.folder}: this process's claim was taken over by {describe(self.holder() or {})} "
                            f"(this one did not renew it for {self.lease:.0f} s); its result is left to that one")

    def release(self) -> None:
        if self.gen is None:
            return
        _renewer.remove(self)
        if not self.lost and self._generations()[-1:] == [self.gen]:
            with contextlib.suppress(OSError):
                os.replace(self._write_beside(self._record(released=time.time())), self._path(self.gen))
        self.gen = None

    def __enter__(self) -> "Claim":
        return self if self.gen is not None else self.hold()

    def __exit__(self, *exc) -> None:
        self.release()


class _Renewer:
    """One daemon thread per process renews every claim the process holds."""

    def __init__(self):
        self.claims: set[Claim] = set()
        self.lock = threading.Lock()
        self.thread: threading.Thread | None = None
        self.wake = threading.Event()

    def add(self, claim: Claim) -> None:
        with self.lock:
            self.claims.add(claim)
            if self.thread is None or not self.thread.is_alive():
                self.thread = threading.Thread(target=self._run, name="ftscale-claims", daemon=True)
                self.thread.start()

    def remove(self, claim: Claim) -> None:
        with self.lock:
            self.claims.discard(claim)

    def _run(self) -> None:
        while True:
            with self.lock:
                claims = list(self.claims)
            for claim in claims:
                with contextlib.suppress(OSError):  # a filesystem hiccup: the next round tries again
                    claim.renew()
            self.wake.wait(min((c.lease for c in claims), default=DEFAULT_LEASE_S) / 6)


_renewer = _Renewer()


# -- appending to a file several processes share (the distillation and capture caches) -----------
def _cut_torn_tail(f) -> None:
    """Drop a last line a killed writer left without its newline (f: opened for update)."""
    end = f.seek(0, os.SEEK_END)
    if end == 0:
        return
    f.seek(end - 1)
    if f.read(1) == b"\n":
        return
    step, pos = 1 << 16, end
    while pos > 0:  # back to the last newline
        start = max(0, pos - step)
        f.seek(start)
        chunk = f.read(pos - start)
        cut = chunk.rfind(b"\n")
        if cut >= 0:
            f.truncate(start + cut + 1)
            break
        pos = start
    else:
        f.truncate(0)
    os.fsync(f.fileno())


@contextlib.contextmanager
def appending(path: str | Path):
    """`path` open for appending bytes under an exclusive lock (flock; NFS clients turn it into a lock
    on the server), its torn last line cut first: lines other processes append are never cut or run
    into. Reading the file for a repair goes through here too."""
    import fcntl

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+b") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            _cut_torn_tail(f)
            f.seek(0, os.SEEK_END)
            yield f
            f.flush()
            os.fsync(f.fileno())
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)

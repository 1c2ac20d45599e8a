"""`make slurm-check`: a real SLURM cluster of one node, in a temporary folder, runs a sweep's cells as
scheduler jobs (`ftscale sweep --executor slurm`, through submitit), one job is cancelled with `scancel`
in the middle of its training and the sweep submitted again, and every cell must end done exactly once
with the scores, answers and adapter of the built-in loop (`ftscale sweep` on this machine).

A script people run, not a CI test: it needs root (the daemons run as root) and Debian's slurm-wlm
(22.05) and munge, which `make slurm-check` installs with apt-get when they are missing. munged,
slurmctld and slurmd run in the foreground (-F / -D) as children of this script, with their
configuration, keys, sockets, state and logs in a temporary folder; no systemd, no cgroups
(ProctrackType=proctrack/linuxproc, TaskPlugin=task/none), and no accounting: ftscale's SLURM path
never asks submitit for a job's state (which would run `sacct`): `ftscale sweep --executor slurm`
submits and returns, and progress is read from the cells' own files (`ftscale sweep --status`). So
neither slurmdbd nor MariaDB is needed, and AccountingStorageType=accounting_storage/none shows it.

    make slurm-check                       # as root, from a checkout after `make setup`
    .venv/bin/python tests/slurm_check.py --keep   # keep the temporary folder (logs, cells) afterwards

Prints each step with the time since the start, and `slurm-check passed` at the end (exit 0).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
START = time.monotonic()
CPUS_PER_JOB = 1  # two jobs at once on a 2-core node


def log(message: str) -> None:
    print(f"[{time.monotonic() - START:7.1f} s] {message}", flush=True)


def wait(condition, what: str, timeout: float, poll: float = 1.0):
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise SystemExit(f"slurm-check FAILED: no {what} within {timeout:.0f} s")
        time.sleep(poll)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Cluster:
    """munged, slurmctld and slurmd in the foreground, configured in `folder`."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.conf = folder / "slurm.conf"
        self.env = os.environ | {"SLURM_CONF": str(self.conf)}
        self.procs: list[subprocess.Popen] = []

    def _config(self) -> str:
        node = subprocess.run(["slurmd", "-C"], capture_output=True, text=True, check=True).stdout.splitlines()[0]
        host = node.split()[0].removeprefix("NodeName=")
        f = self.folder
        return "\n".join([
            "ClusterName=ftscale-check", f"SlurmctldHost={host}", f"SlurmctldPort={free_port()}",
            f"SlurmdPort={free_port()}", "SlurmUser=root", "SlurmdUser=root",
            "AuthType=auth/munge", "CredType=cred/munge", f"AuthInfo=socket={f}/munge.socket",
            f"StateSaveLocation={f}/state", f"SlurmdSpoolDir={f}/spool", f"SlurmctldPidFile={f}/slurmctld.pid",
            f"SlurmdPidFile={f}/slurmd.pid", f"SlurmctldLogFile={f}/slurmctld.log", f"SlurmdLogFile={f}/slurmd.log",
            f"PlugStackConfig={f}/plugstack.conf",
            "ProctrackType=proctrack/linuxproc", "TaskPlugin=task/none",  # no cgroups
            "JobAcctGatherType=jobacct_gather/none", "AccountingStorageType=accounting_storage/none",
            "JobCompType=jobcomp/none", "MpiDefault=none", "SchedulerType=sched/backfill",
            "SelectType=select/cons_tres", "SelectTypeParameters=CR_Core", "ReturnToService=2",
            "KillWait=10",  # scancel: SIGTERM, then SIGKILL 10 s later
            f"{node} NodeAddr=127.0.0.1 State=UNKNOWN",
            f"PartitionName=check Nodes={host} Default=YES MaxTime=INFINITE State=UP", ""])

    def start(self) -> None:
        f = self.folder
        for sub in ("state", "spool"):
            (f / sub).mkdir()
        (f / "plugstack.conf").write_text("")
        key = f / "munge.key"
        key.write_bytes(os.urandom(1024))
        key.chmod(0o400)
        self.conf.write_text(self._config())
        self._daemon(["munged", "-F", "--force", f"--key-file={key}", f"--socket={f}/munge.socket",
                      f"--pid-file={f}/munged.pid", f"--log-file={f}/munged.log", f"--seed-file={f}/munged.seed"],
                     "munged")
        wait(lambda: (f / "munge.socket").exists(), "munge socket", 30, 0.2)
        self._daemon(["slurmctld", "-D", "-i", "-f", str(self.conf)], "slurmctld")
        self._daemon(["slurmd", "-D", "-f", str(self.conf)], "slurmd")
        wait(lambda: self.run("sinfo", "-h", "-o", "%T", check=False).strip() in ("idle", "idle*"), "idle node", 120)
        log(f"cluster up in {f}: " + self.run("sinfo", "-h", "-o", "%P %D %c CPUs %T").strip())

    def _daemon(self, cmd: list[str], name: str) -> None:
        out = open(self.folder / f"{name}.out", "w")
        self.procs.append(subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=self.env,
                                           stdin=subprocess.DEVNULL))
        time.sleep(0.5)
        if self.procs[-1].poll() is not None:
            raise SystemExit(f"slurm-check FAILED: {name} exited: {(self.folder / f'{name}.out').read_text()[-2000:]}")

    def run(self, *cmd: str, check: bool = True) -> str:
        proc = subprocess.run(cmd, capture_output=True, text=True, env=self.env)
        if check and proc.returncode != 0:
            raise SystemExit(f"slurm-check FAILED: {' '.join(cmd)}: {proc.stderr.strip()}")
        return proc.stdout

    def jobs(self) -> dict[str, str]:
        """Job id (an array task's own) -> state of every job the controller still lists."""
        out = self.run("squeue", "-h", "-o", "%A %T")
        return dict(line.split() for line in out.splitlines() if line.strip())

    def stop(self) -> None:
        """Every job cancelled and ended, then slurmd, slurmctld and munged, each one this script started."""
        if len(self.procs) == 3 and all(p.poll() is None for p in self.procs):
            self.run("scancel", "--full", "--user", "root", check=False)
            try:
                wait(lambda: not self.jobs(), "end of the cancelled jobs", 60)
            except SystemExit as e:
                log(str(e))
        import psutil

        for p in psutil.process_iter(["name"]):  # a job step the daemons left behind (none, normally)
            try:
                if (p.info["name"] or "").startswith("slurmstepd") and p.cwd().startswith(str(self.folder)):
                    for q in [*p.children(recursive=True), p]:
                        q.kill()
            except psutil.Error:
                pass
        for proc in reversed(self.procs):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()


def sweep_file(folder: Path, output_dir: Path, name: str) -> Path:
    """A 2-cell sweep (one size, two seeds) of the embedded model, one CPU per job and no GPU."""
    spec = {"name": "slurm-check", "base": str(ROOT / "configs" / "experiments" / "formatting-smollm2-cpu.yaml"),
            "overrides": {"eval.limit": 6, "eval.max_new_tokens": 24, "eval.batch_size": 6, "train.batch_size": 4,
                          "eval.probes": None, "eval.baseline_variants": "[]"},
            "systems": [{"name": "smollm2 LoRA", "backend": "local", "model": "smollm2-135m"}],
            "num_train_examples": [32], "seeds": [1, 2], "epochs": [3], "prompt_variants": ["default"],
            "baseline_variants": [], "output_dir": str(output_dir),
            "slurm": {"cpus_per_task": CPUS_PER_JOB, "timeout_min": 60}}
    path = folder / f"{name}.yaml"
    path.write_text(json.dumps(spec, indent=1))  # JSON is YAML
    return path


def ftscale(*args: str, env=None) -> str:
    proc = subprocess.run([str(BIN / "ftscale"), *args], cwd=ROOT, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise SystemExit(f"slurm-check FAILED: ftscale {' '.join(args)} exited {proc.returncode}:\n"
                         f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc.stdout  # what it says; stderr holds the progress bars


# the Trainer's progress bar: no description before its percentage (the others: "Loading weights: ...")
TRAINING_BAR = re.compile(r"(?:^|[\r\n])\s*\d+%\|[^|\r\n]*\| (\d+)/(\d+) \[")


def training_in_progress(cells, cluster: Cluster) -> tuple | None:
    """(cell, pid, job id, job name, training step) for a cell whose job is training now: the training
    began (config.yaml), has not ended (no metrics yet), and the job's log shows a step done, not the last."""
    for cell in cells:
        state_file = cell.run_dir / "cell.json"
        if not (cell.run_dir / "config.yaml").is_file() or (cell.run_dir / "train_metrics.json").exists() \
                or not state_file.is_file() or json.loads(state_file.read_text()).get("status") != "running":
            continue
        pid = json.loads(state_file.read_text())["pid"]
        job = _job_of(pid)
        # an array task is named by its array's id and its index (1_0), its log folder too
        name = dict(line.split() for line in cluster.run("squeue", "-h", "-o", "%A %i").splitlines()).get(job)
        logs = list((cell.run_dir.parents[2] / "submitit" / str(name)).glob("*_log.err"))
        steps = [m for p in logs for m in TRAINING_BAR.findall(p.read_text(errors="replace"))]
        if name and steps and 0 < int(steps[-1][0]) < int(steps[-1][1]):
            return cell, pid, job, name, f"{steps[-1][0]}/{steps[-1][1]}"
    return None


def compare(cells, reference) -> list[str]:
    """Per cell: done once, and the local run's scores, answers and adapter; what differs, else []."""
    from ftscale.chatdata import sha256_file
    from ftscale.results_store import is_done

    problems = []
    for cell, ref in zip(cells, reference):
        state = json.loads((cell.run_dir / "cell.json").read_text())
        if not is_done(cell.run_dir, cell.key) or state.get("completions") != 1:
            problems.append(f"{cell.run_dir}: not done exactly once: {state}")
            continue
        for name in ("scores.json", "generations.jsonl"):
            mine, theirs = (d / "eval-default" / name for d in (cell.run_dir, ref.run_dir))
            if name == "scores.json":
                same = json.loads(mine.read_text())["metrics"] == json.loads(theirs.read_text())["metrics"]
            else:
                outputs = [[json.loads(line)["output"] for line in p.open()] for p in (mine, theirs)]
                same = outputs[0] == outputs[1]
            if not same:
                problems.append(f"{mine} differs from the local run's {theirs}")
        adapter = "adapter/adapter_model.safetensors"
        if sha256_file(cell.run_dir / adapter) != sha256_file(ref.run_dir / adapter):
            problems.append(f"{cell.run_dir / adapter} differs from the local run's")
    return problems


def check(folder: Path, cluster: Cluster) -> None:
    from ftscale.sweepconfig import expand, load_sweep

    path = sweep_file(folder, folder / "sweeps", "on-slurm")
    cells = expand(*load_sweep(path))
    env = cluster.env
    log("ftscale sweep --executor slurm: " + ftscale("sweep", str(path), "--executor", "slurm", env=env).strip())
    log("jobs: " + json.dumps(cluster.jobs()))
    victim, pid, job, name, step = wait(lambda: training_in_progress(cells, cluster), "job in the middle of its "
                                        "training", 1800)
    log(f"cancelling job {name} at training step {step} ({victim.run_dir.name}, pid {pid}): scancel {name}")
    cluster.run("scancel", name)  # an array task by its array name: its own job id is refused
    # submitit's job ignores the SIGTERM: SLURM kills it KillWait seconds later
    wait(lambda: job not in cluster.jobs() and not _alive(pid), f"end of job {name}", 120)
    log("after scancel: " + ftscale("sweep", str(path), "--status", env=env).strip().replace("\n", " | "))
    log("submitted again: " + ftscale("sweep", str(path), "--executor", "slurm", env=env).strip().replace("\n", " | "))
    wait(lambda: not cluster.jobs(), "end of every job", 3600, 5.0)
    log("all jobs ended: " + ftscale("sweep", str(path), "--status", env=env).strip().replace("\n", " | "))
    local = sweep_file(folder, folder / "local", "local")
    # on as many threads as a job had (cpus_per_task): two processes of two threads on two cores spin
    # waiting for each other (docs/benchmarks.md, Sweeps)
    one = os.environ | {"OMP_NUM_THREADS": str(CPUS_PER_JOB)}
    log("the same sweep in the built-in loop: " + ftscale("sweep", str(local), env=one).strip().splitlines()[-1])
    problems = compare(cells, expand(*load_sweep(local)))
    if problems:
        raise SystemExit("slurm-check FAILED:\n" + "\n".join(problems))
    for cell in cells:
        state = json.loads((cell.run_dir / "cell.json").read_text())
        scores = json.loads((cell.run_dir / "eval-default" / "scores.json").read_text())["metrics"]
        log(f"{cell.run_dir.name}: done once ({state['attempts']} attempt(s)), the local run's scores, answers and "
            f"adapter: " + ", ".join(f"{k}={v:.3f}" for k, v in scores.items() if isinstance(v, float)))


def _alive(pid: int) -> bool:
    from ftscale.claims import process_started

    return process_started(pid) is not None


def _job_of(pid: int) -> str | None:
    """The SLURM job a process runs in: the id its slurmstepd ancestor (`slurmstepd: [ID.step]`) names."""
    import psutil

    try:
        for p in psutil.Process(pid).parents():
            name = " ".join(p.cmdline())
            if name.startswith("slurmstepd: ["):
                return name.removeprefix("slurmstepd: [").split(".")[0]
    except psutil.Error:  # it ended meanwhile
        pass
    return None


def _interrupt(signum, frame):
    raise KeyboardInterrupt


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--keep", action="store_true", help="keep the temporary folder (logs, cells, configuration)")
    args = p.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("slurm-check needs root: munged, slurmctld and slurmd run as root")
    missing = [d for d in ("munged", "slurmctld", "slurmd", "sbatch") if shutil.which(d) is None]
    if missing:
        raise SystemExit(f"slurm-check needs Debian's slurm-wlm and munge ({', '.join(missing)} missing): "
                         "apt-get install slurm-wlm munge (make slurm-check does)")
    # SIGTERM (a `kill`, a CI's timeout) unwinds as Ctrl-C does: the cluster and its jobs are stopped below
    signal.signal(signal.SIGTERM, _interrupt)
    folder = Path(tempfile.mkdtemp(prefix="ftscale-slurm-"))
    cluster = Cluster(folder)
    try:
        cluster.start()
        check(folder, cluster)
    finally:
        cluster.stop()
        if args.keep:
            log(f"kept {folder}")
        else:
            shutil.rmtree(folder, ignore_errors=True)
    log("slurm-check passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""`ftscale bench main-job`: an experiment run by an earlier revision and by this code, back to back.

A CPU's absolute times drift from day to day; the ratio of two runs made one after the other on
the same machine does not. The earlier revision is taken from git (`git archive`) and installed
into a fresh environment without dependencies (it shares this environment's torch, transformers,
...); both run `python -m ftscale run` on the same config from the current folder, the baseline
first. Each run starts from an empty output folder, so nothing is reused. Printed and written to
`<output>/main-job.json`: both wall times, the ratio, each row's scores side by side and how many
answers of each evaluation are identical.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import sysconfig
import tarfile
import tempfile
import time
from io import BytesIO
from pathlib import Path

from ftscale import allocator, paths
from ftscale.atomic import write_json
from ftscale.errors import FtscaleError

HEADLINE = ("cell", "prompt_variant", "temperature")  # what identifies a row of results.json


def resolve_revision(rev: str) -> str:
    """The commit `rev` names (a branch, a tag, a hash, HEAD~2): git is given it only after `--end-of-options`,
    so that no revision is read as an option (`--output=FILE` would make git write a file)."""
    if not rev or rev.startswith("-"):
        raise FtscaleError(f"--baseline {rev}: a git revision (a branch, a tag or a commit), not an option")
    found = subprocess.run(["git", "-C", str(paths.ROOT), "rev-parse", "--verify", "--quiet", "--end-of-options",
                            f"{rev}^{{commit}}"], capture_output=True, text=True)
    if found.returncode:
        raise FtscaleError(f"--baseline {rev}: not a commit of this checkout (git rev-parse --verify found none)")
    return found.stdout.strip()


def install_revision(rev: str, where: Path) -> Path:
    """The python of a fresh environment where `import ftscale` is git revision `rev`, installed
    without dependencies: it sees this environment's packages through a plain path line (whose .pth
    files, this checkout's editable install among them, are not run)."""
    if not (paths.ROOT / ".git").exists():
        raise FtscaleError("ftscale bench main-job needs a git checkout of ftscale (it installs --baseline from git)")
    commit = resolve_revision(rev)
    archive = subprocess.run(["git", "-C", str(paths.ROOT), "archive", "--format=tar", commit], capture_output=True)
    if archive.returncode:
        raise FtscaleError(f"--baseline {rev}: {archive.stderr.decode().strip()}")
    src, venv = where / f"ftscale-{rev.replace('/', '-')}", where / "venv"  # (a folder named src confuses setuptools)
    with tarfile.open(fileobj=BytesIO(archive.stdout)) as tar:
        tar.extractall(src, filter="data")
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    purelib = Path(subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                                  capture_output=True, text=True, check=True).stdout.strip())
    (purelib / "this-environment.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
                    "--target", str(purelib), str(src)], check=True)
    found = subprocess.run([str(python), "-P", "-c", "import ftscale.eval; print(ftscale.eval.__file__)"],
                           capture_output=True, text=True).stdout.strip()
    if not found.startswith(str(purelib)):  # the comparison would time this code twice
        raise FtscaleError(f"the baseline's ftscale is not the one imported ({found or 'not found'})")
    return python


def timed_run(python: Path | str, config: str, out: Path, extra: list[str]) -> float:
    """Wall seconds of `ftscale run config` into `out` (which must not exist yet), run from this checkout."""
    # as the user started this command: without the tcmalloc `ftscale` added to its own process, which the
    # baseline's code did not add (this code adds it again itself)
    env = allocator.without_added(os.environ) | {"FTSCALE_MODELS_DIR": str(paths.models_dir())}
    cwd = Path.cwd()
    # -P: the current folder (a checkout's ftscale/) is not put ahead of the installed package
    cmd = [str(python), "-P", "-m", "ftscale", "run", config, "--output_dir", str(out), *extra]
    print("$ " + " ".join(cmd) + f"   (in {cwd})", flush=True)
    t0 = time.perf_counter()
    done = subprocess.run(cmd, cwd=cwd, env=env)
    if done.returncode:
        raise FtscaleError(f"the run in {cwd} failed (exit {done.returncode}); its output is in {out}")
    return time.perf_counter() - t0


def rows_of(run_dir: Path) -> dict[tuple, dict]:
    rows = json.loads((run_dir / "results.json").read_text())["rows"]
    return {tuple(r[k] for k in HEADLINE): r for r in rows}


def same_answers(a: str, b: str) -> tuple[int, int]:
    """(identical outputs, examples) of two generations files of the same eval set."""
    left = [json.loads(line)["output"] for line in open(a, encoding="utf-8")]
    right = [json.loads(line)["output"] for line in open(b, encoding="utf-8")]
    return sum(x == y for x, y in zip(left, right)), len(left)


def scores_of(row: dict) -> dict:
    """The evaluation's metrics, from the scores.json beside its generations."""
    return json.loads((Path(row["generations"]).parent / "scores.json").read_text())["metrics"]


def compare(old: Path, new: Path) -> list[dict]:
    """Each row of the two runs: its scores side by side and its identical answers."""
    before, after = rows_of(old), rows_of(new)
    table = []
    for key, row in after.items():
        prev = before.get(key)
        same = same_answers(prev["generations"], row["generations"]) if prev else (0, row["n_eval"])
        table.append({"row": dict(zip(HEADLINE, key)), "identical_answers": same[0], "examples": same[1],
                      "baseline": scores_of(prev) if prev else None, "this": scores_of(row)})
    return table


def run_bench(config: str, baseline: str, output: Path, extra: list[str], jobs: int = 1) -> dict:
    """Run `config` with revision `baseline`, then with this code (`--jobs jobs`); return and write
    the comparison."""
    output.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    with tempfile.TemporaryDirectory(prefix="ftscale-baseline-") as tmp:
        python = install_revision(baseline, Path(tmp))
        old_out, new_out = output.resolve() / f"{stamp}-baseline", output.resolve() / f"{stamp}-this"
        old_s = timed_run(python, config, old_out, extra)
        new_s = timed_run(sys.executable, config, new_out, [*extra, "--jobs", str(jobs)])
        name = next(new_out.glob("*/results.json")).parent.name  # the experiment's folder
        result = {"config": config, "baseline": baseline, "this": this_revision(), "jobs": jobs, "date": time.strftime("%Y-%m-%d"),
                  "machine": {"cpu_threads": os.cpu_count()}, "allocator": allocators(baseline),
                  "baseline_s": round(old_s, 1), "this_s": round(new_s, 1),
                  "speedup": round(old_s / new_s, 2), "rows": compare(old_out / name, new_out / name)}
    write_json(output / "main-job.json", result)
    return result


def allocators(baseline: str) -> dict:
    """What each run allocated with: tcmalloc where the code preloads it itself (ftscale/allocator.py, since
    2026-12-07) and it is installed, else what the user preloaded, else the system's."""
    env = allocator.without_added(os.environ)
    has_it = subprocess.run(["git", "-C", str(paths.ROOT), "cat-file", "-e", f"{baseline}:ftscale/allocator.py"],
                            capture_output=True).returncode == 0
    return {"baseline": allocator.in_effect(env) if has_it else allocator.preloaded(env) or "system",
            "this": allocator.in_effect(env)}


def this_revision() -> str:
    head = subprocess.run(["git", "-C", str(paths.ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    dirty = subprocess.run(["git", "-C", str(paths.ROOT), "status", "--porcelain", "--untracked-files=no"],
                           capture_output=True, text=True).stdout.strip()
    return head.stdout.strip() + ("+changes" if dirty else "")


def summary(result: dict) -> str:
    lines = [f"baseline {result['baseline']}: {result['baseline_s']:.0f} s; this ({result['this']}): "
             f"{result['this_s']:.0f} s; speedup {result['speedup']:.2f}x",
             "allocator: baseline {baseline}, this {this}".format(**result["allocator"]), ""]
    for row in result["rows"]:
        label = " ".join(str(v) for v in row["row"].values())
        scores = ", ".join(f"{m} {fmt((row['baseline'] or {}).get(m))} -> {fmt(v)}" for m, v in row["this"].items())
        lines.append(f"{label}: {row['identical_answers']}/{row['examples']} answers identical; {scores}")
    return "\n".join(lines)


def fmt(value) -> str:
    return "n/a" if value is None else f"{value:.3f}"

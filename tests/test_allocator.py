"""`ftscale` executes itself again with tcmalloc preloaded (ftscale/allocator.py): the console script
and `python -m ftscale` do, by the library's absolute path; a program calling `cli.main()` and a user's
own LD_PRELOAD are left alone. Only the tests that need the library skip without it."""

from __future__ import annotations

import ctypes
import json
import os
import shutil
import subprocess
import sys

import pytest

from ftscale import allocator, doctor

from conftest import BIN

linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="ftscale preloads tcmalloc on Linux only")
needs_tcmalloc = pytest.mark.skipif(allocator.library() is None or not sys.platform.startswith("linux"),
                                    reason="tcmalloc is not installed (make setup installs Debian's libtcmalloc-minimal4)")

# imported by every Python process of the test (PYTHONPATH): the process that ends (after the re-execution,
# if there was one) says which tcmalloc files it has mapped, what it was started with, and its arguments
REPORTER = """import atexit, json, os, sys
def _report():
    mapped = sorted({line.split()[-1] for line in open('/proc/self/maps') if 'tcmalloc' in line})
    print('REPORT ' + json.dumps({'mapped': mapped, 'added': os.environ.get('FTSCALE_PRELOADED'),
                                  'preload': os.environ.get('LD_PRELOAD'), 'argv': sys.argv[1:]}), flush=True)
atexit.register(_report)
"""


def run(tmp_path, command: list[str], env: dict | None = None) -> tuple[subprocess.CompletedProcess, dict | None]:
    """`command` started as a user starts it (nothing of the test run's own preloading), and its report."""
    (tmp_path / "sitecustomize.py").write_text(REPORTER)
    clean = {k: v for k, v in os.environ.items() if k not in ("LD_PRELOAD", allocator.ADDED, "FTSCALE_MALLOC")}
    done = subprocess.run(command, env=clean | {"PYTHONPATH": str(tmp_path)} | (env or {}), capture_output=True,
                          text=True, timeout=120, cwd=tmp_path)
    reports = [json.loads(line[len("REPORT "):]) for line in done.stdout.splitlines() if line.startswith("REPORT ")]
    assert len(reports) <= 1, done.stdout
    return done, (reports[0] if reports else None)


def real(path: str) -> str:
    return os.path.realpath(path)


@needs_tcmalloc
@pytest.mark.parametrize("how", ["console script", "python -m ftscale"])
def test_the_command_runs_on_tcmalloc_by_its_absolute_path_with_its_own_arguments(tmp_path, how):
    command = [str(BIN / "ftscale")] if how == "console script" else [sys.executable, "-m", "ftscale"]
    done, report = run(tmp_path, [*command, "--help"])
    assert done.returncode == 0, done.stderr
    lib = allocator.library()
    assert os.path.isabs(lib)
    assert report == {"mapped": [real(lib)], "added": lib, "preload": lib, "argv": ["--help"]}
    assert done.stdout.count("usage: ftscale") == 1  # the command itself ran, once


@needs_tcmalloc
def test_the_library_is_not_looked_up_through_ld_library_path(tmp_path):
    """A folder of LD_LIBRARY_PATH holding a library named like tcmalloc (here zlib under that name) is not
    where the preloaded tcmalloc comes from."""
    lookalike = tmp_path / "lib"
    lookalike.mkdir()
    ctypes.CDLL("libz.so.1")  # mapped into this process, so its path can be read
    zlib = next(real(p) for p in open("/proc/self/maps").read().split() if "/libz.so" in p)
    for name in ("libtcmalloc_minimal.so.4", "libtcmalloc.so.4"):
        shutil.copyfile(zlib, lookalike / name)
    done, report = run(tmp_path, [str(BIN / "ftscale"), "--help"], {"LD_LIBRARY_PATH": str(lookalike)})
    assert done.returncode == 0, done.stderr
    assert report["mapped"] == [real(allocator.library())], report


@needs_tcmalloc
def test_a_program_calling_main_is_not_executed_again(tmp_path):
    """A notebook or a script that calls `cli.main()`: its own command line is not run a second time."""
    program = tmp_path / "program.py"
    program.write_text("import sys\nprint('PROGRAM STARTED', flush=True)\nsys.argv = ['ftscale', '--help']\n"
                       "from ftscale.cli import main\nmain()\n")
    done, report = run(tmp_path, [sys.executable, str(program), "an-argument"])
    assert done.returncode == 0, done.stderr
    assert done.stdout.count("PROGRAM STARTED") == 1 and done.stdout.count("usage: ftscale") == 1
    assert report == {"mapped": [], "added": None, "preload": None, "argv": ["--help"]}


@needs_tcmalloc
def test_a_users_own_preload_is_left_alone_and_doctor_says_so(tmp_path, monkeypatch):
    done, report = run(tmp_path, [str(BIN / "ftscale"), "--help"], {"LD_PRELOAD": "libz.so.1"})
    assert done.returncode == 0, done.stderr
    assert report == {"mapped": [], "added": None, "preload": "libz.so.1", "argv": ["--help"]}
    assert allocator.preload({"LD_PRELOAD": "libz.so.1"}) == "libz.so.1"  # what `make test` and children get
    monkeypatch.setenv("LD_PRELOAD", "libz.so.1")
    monkeypatch.delenv("FTSCALE_MALLOC", raising=False)
    check = doctor.check_allocator()
    assert check.status == doctor.SKIPPED and "LD_PRELOAD=libz.so.1 is set: ftscale leaves it alone" in check.measured["reason"]


@linux_only
def test_system_keeps_glibc(tmp_path):
    done, report = run(tmp_path, [str(BIN / "ftscale"), "--help"], {"FTSCALE_MALLOC": "system"})
    assert done.returncode == 0 and report == {"mapped": [], "added": None, "preload": None, "argv": ["--help"]}


@linux_only
def test_a_bad_ftscale_malloc_is_refused_as_bad_input(tmp_path):
    bad, _ = run(tmp_path, [str(BIN / "ftscale"), "--help"], {"FTSCALE_MALLOC": "jemalloc"})
    assert bad.returncode == 2 and "error: FTSCALE_MALLOC=jemalloc: give tcmalloc (the default) or system" in bad.stderr


def test_only_what_was_added_is_taken_off():
    lib = "/usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4"
    env = {"LD_PRELOAD": "libuser.so", "PATH": "/bin"}
    added = dict(env, LD_PRELOAD=f"{lib}:libuser.so", FTSCALE_PRELOADED=lib)
    assert allocator.without_added(added) == env
    assert allocator.without_added({"LD_PRELOAD": lib, allocator.ADDED: lib}) == {}
    assert allocator.in_effect(added) == lib and allocator.in_effect({"FTSCALE_MALLOC": "system"}) == "system"

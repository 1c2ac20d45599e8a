"""`ftscale` executes itself again with tcmalloc preloaded (ftscale/allocator.py)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from ftscale import allocator

pytestmark = pytest.mark.skipif(allocator.library() is None or not sys.platform.startswith("linux"),
                                reason="tcmalloc is not installed (make setup installs Debian's libtcmalloc-minimal4)")

# after `ftscale --help` has printed, the process that printed it says what it runs on and with which arguments
REPORT = ("import atexit, os, sys; given = sys.argv[1:]; atexit.register(lambda: print('MAPPED', 'tcmalloc' in "
          "open('/proc/self/maps').read(), os.environ.get('FTSCALE_PRELOADED'), given)); sys.argv = ['ftscale', '--help']; "
          "from ftscale.cli import main; raise SystemExit(main())")


def run(env: dict) -> subprocess.CompletedProcess:
    # as a user starts it: nothing of the test run's own preloading
    clean = {k: v for k, v in os.environ.items() if k not in ("LD_PRELOAD", allocator.ADDED, "FTSCALE_MALLOC")}
    return subprocess.run([sys.executable, "-c", REPORT, "an-argument"], env=clean | env, capture_output=True,
                          text=True, timeout=60)


def test_the_command_runs_on_tcmalloc_with_its_own_arguments():
    done = run({})
    assert done.returncode == 0, done.stderr
    mapped = done.stdout.splitlines()[-1]
    assert mapped == f"MAPPED True {allocator.library()} ['an-argument']"
    assert done.stdout.count("usage: ftscale") == 1  # the command itself ran, once


def test_system_keeps_glibc_and_anything_else_is_refused():
    done = run({"FTSCALE_MALLOC": "system"})
    assert done.returncode == 0 and done.stdout.splitlines()[-1] == "MAPPED False None ['an-argument']"
    bad = run({"FTSCALE_MALLOC": "jemalloc"})
    assert bad.returncode == 2 and "error: FTSCALE_MALLOC=jemalloc: give tcmalloc (the default) or system" in bad.stderr


def test_a_preload_of_the_users_own_is_kept_and_only_ours_is_taken_off():
    env = {"LD_PRELOAD": "libuser.so", "PATH": "/bin"}
    added = dict(env, LD_PRELOAD=f"{allocator.library()}:libuser.so", FTSCALE_PRELOADED=allocator.library())
    assert allocator.without_added(added) == env
    assert allocator.without_added({"LD_PRELOAD": allocator.library(), allocator.ADDED: allocator.library()}) == {}
    assert allocator.in_effect(added) == allocator.library() and allocator.in_effect({"FTSCALE_MALLOC": "system"}) == "system"

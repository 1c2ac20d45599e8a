"""One progress view for `ftscale run`: on a terminal one line per cell, redrawn in place under the
messages (read back through a terminal emulator, pyte, as a person would see the screen); in a log,
plain lines; and never a library's bar or log line in the middle of it (they go to the cells' logs).
The piped mode of a real `--jobs 2` run is checked in tests/test_run_experiment.py."""

from __future__ import annotations

import fcntl
import io
import os
import pty
import struct
import subprocess
import termios
import time

import pyte

from conftest import BIN, MAIN_CONFIG, ROOT
from ftscale import progress
from ftscale.progress import Event, LineView, LiveView

COLS, ROWS = 120, 40


def _screen(raw: str) -> list[str]:
    screen = pyte.Screen(COLS, ROWS)
    pyte.Stream(screen).feed(raw.replace("\n", "\r\n"))  # the terminal's own newline translation (onlcr)
    return [line.rstrip() for line in screen.display if line.strip()]


def _events(view) -> None:
    """Two cells working at once, the way the cell processes report: phases, counts, messages, the end."""
    for e in [Event("n0100-seed42", "training"), Event("n0000-seed42", "answering default (hf)"),
              Event("n0100-seed42", None, 0, 26, unit="steps"), Event("n0000-seed42", None, 0, 200, unit="req")]:
        view(e)
    for step in range(1, 27):
        view(Event("n0100-seed42", None, step, 26, unit="steps"))
        view(Event("n0000-seed42", None, min(200, step * 8), 200, unit="req"))
        if step == 13:
            view(Event("n0000-seed42", message="n0000-seed42 [hf, default]: format_ok=0.000"))
    view(Event("n0000-seed42", "done"))
    view(Event("n0000-seed42", "answering few_shot (hf)"))  # late: after its end, ignored
    view(Event("n0100-seed42", message="n0100-seed42: trained 26 steps in 90.1 s"))
    view(Event("n0100-seed42", "answering default (hf)"))


def test_the_live_view_keeps_one_line_per_cell_under_the_messages():
    out = io.StringIO()
    view = LiveView("formatting-smollm2-cpu", ["n0100-seed42", "n0000-seed42", "n0050-seed42"], out)
    _events(view)
    view.close()
    lines = _screen(out.getvalue())
    assert lines[:2] == ["n0000-seed42 [hf, default]: format_ok=0.000", "n0100-seed42: trained 26 steps in 90.1 s"]
    assert lines[2].startswith("formatting-smollm2-cpu: 1 of 3 cells finished, ")
    assert [line.split()[0] for line in lines[3:]] == ["n0100-seed42", "n0000-seed42", "n0050-seed42"]
    assert "answering default (hf)" in lines[3] and lines[4].split() == ["n0000-seed42", "done"]
    assert lines[5].split() == ["n0050-seed42", "waiting"] and len(lines) == 6
    assert all(len(line) < COLS for line in lines)  # never wrapped: a wrapped line would break the redraw


def test_the_line_view_writes_plain_lines_at_each_quarter():
    out = io.StringIO()
    view = LineView("formatting-smollm2-cpu", ["n0100-seed42", "n0000-seed42", "n0050-seed42"], out)
    _events(view)
    view.close()
    text = out.getvalue()
    assert "\r" not in text and "\x1b" not in text
    lines = [line.split("] ", 1)[-1] for line in text.splitlines()]
    steps = [line for line in lines if line.startswith("n0100-seed42: training ")]
    assert steps == ["n0100-seed42: training 7/26 steps", "n0100-seed42: training 13/26 steps",
                     "n0100-seed42: training 20/26 steps", "n0100-seed42: training 26/26 steps"]
    assert "n0000-seed42: done (1 of 3 cells finished)" in lines
    assert "n0000-seed42 [hf, default]: format_ok=0.000" in lines  # messages verbatim
    assert not any("few_shot" in line for line in lines)  # an event after a cell's end is dropped


def test_without_a_view_the_libraries_keep_their_bars(capsys):
    assert not progress.active()
    bar = progress.bar(3, "generating", "req")
    assert type(bar).__module__.startswith("tqdm")
    progress.message("plain")
    assert capsys.readouterr().out == "plain\n"


def test_a_real_run_with_two_jobs_on_a_terminal(tmp_path, embedded_model):
    """`ftscale run --jobs 2` on a pseudo-terminal: what the screen shows at the end is the view, one
    line per cell, with no training log, weight-loading bar or generation bar in it."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", ROWS, COLS, 0, 0))
    cmd = [str(BIN / "ftscale"), "run", str(MAIN_CONFIG), "--output-dir", str(tmp_path), "--num-train-examples",
           "[0, 8]", "--train.epochs", "1", "--eval.limit", "4", "--eval.max-new-tokens", "16", "--jobs", "2"]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdin=subprocess.DEVNULL, stdout=slave, stderr=slave,
                            env=os.environ | {"TERM": "xterm", "COLUMNS": str(COLS), "LINES": str(ROWS)})
    os.close(slave)
    raw = bytearray()
    deadline = time.monotonic() + 900
    while time.monotonic() < deadline:
        try:
            chunk = os.read(master, 65536)
        except OSError:  # the terminal's other end closed: the run is over
            break
        if not chunk:
            break
        raw += chunk
    os.close(master)
    assert proc.wait(timeout=60) == 0, raw.decode(errors="replace")[-3000:]
    text = raw.decode(errors="replace")
    assert "\x1b[" in text  # redrawn in place
    for noise in ("Loading weights", "generating (", "{'loss'", "it/s]"):
        assert noise not in text, noise
    lines = _screen(text)
    block = lines[lines.index(next(line for line in lines if line.startswith("formatting-smollm2-cpu: "))):]
    assert block[0].startswith("formatting-smollm2-cpu: 2 of 2 cells finished")
    assert sorted(line.split() for line in block[1:3]) == [["n0000-seed42", "done"], ["n0008-seed42", "done"]]
    assert lines[-1].startswith("done in ") and "summary.md" in lines[-1]
    for cell in ("n0000-seed42", "n0008-seed42"):  # each scores line once, above the view
        assert sum(line.startswith(f"{cell} [hf, default]: format_ok=") for line in lines) == 1
    logs = tmp_path / "formatting-smollm2-cpu" / "logs"
    assert "Loading weights" in (logs / "n0008-seed42.log").read_text()  # where the libraries' output went

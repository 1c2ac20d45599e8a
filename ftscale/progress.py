"""One progress view for an experiment's cells, however many run at once.

`ftscale run` owns the terminal: each cell reports what it is doing (training, step k of n; evaluating
a prompt, request k of n; done) as events, and one view draws them. Cells in processes of their own
(`--jobs N`) send their events through a queue; what the libraries print in a cell (transformers'
and TRL's bars and logs, warnings) goes to that cell's log file, `<experiment>/logs/<cell>.log`,
never into another cell's line.

- On a terminal (`LiveView`): one line per cell, redrawn in place, with ftscale's own messages
  scrolling above them.
- Anywhere else (a CI log, `nohup`, a pipe: `LineView`): one plain line per event, no control
  characters: a phase starting, a quarter of it done, a message.

A process without a view installed (`ftscale eval`, a notebook) keeps the libraries' own bars: `bar`
then returns tqdm's.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator


@dataclass(frozen=True)
class Event:
    """What one cell is doing: a phase (`text`, None: unchanged) and how far it is (done of total), or a
    message to print as a line of its own."""

    cell: str | None
    text: str | None = None
    done: int | None = None
    total: int | None = None
    message: str | None = None
    unit: str = ""


FINISHED = ("done", "failed", "diverged")  # how a cell's line ends (a failed one says what failed)
_sink: Callable[[Event], None] | None = None  # where this process's events go: the view, or the queue to it
_cell: str | None = None  # the cell this process is working on


def install(sink: Callable[[Event], None] | None) -> None:
    global _sink
    _sink = sink


def active() -> bool:
    return _sink is not None


def report(text: str | None = None, done: int | None = None, total: int | None = None, unit: str = "") -> None:
    """The current cell's phase and how far it is; nothing without a view."""
    if _sink is not None:
        _sink(Event(_cell, text, done, total, unit=unit))


def message(text: str) -> None:
    """A line of ftscale's own output (what `log=print` prints without a view)."""
    if _sink is None:
        print(text, flush=True)
    else:
        _sink(Event(_cell, message=str(text)))


class _EventBar:
    """The part of tqdm's interface the backends use, reporting to the view."""

    def __init__(self, total: int, unit: str):
        self.n, self.total, self.unit = 0, total, unit
        report(None, 0, total, unit)

    def update(self, n: int = 1) -> None:
        self.n += n
        report(None, self.n, self.total, self.unit)

    def set_postfix_str(self, *_args, **_kwargs) -> None:
        pass

    def close(self) -> None:
        pass


def bar(total: int, desc: str, unit: str, disable: bool = False):
    """A progress bar: the view's (counts on the current cell's line) when one is installed, else tqdm's."""
    if _sink is not None and not disable:
        return _EventBar(total, unit)
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit=unit, disable=disable)


def trainer_callbacks() -> list:
    """A transformers TrainerCallback that reports the training's steps to the view; none without a view."""
    if _sink is None:
        return []
    from transformers import TrainerCallback

    class _Steps(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if state.is_world_process_zero:
                report(None, state.global_step, state.max_steps, "steps")

    return [_Steps()]


@contextlib.contextmanager
def cell(name: str, log_file: Path | None) -> Iterator[None]:
    """Work on one cell: its events carry its name, and (with a view installed) everything written to this
    process's stdout and stderr goes to `log_file` meanwhile."""
    global _cell
    previous, _cell = _cell, name
    try:
        if _sink is None or log_file is None:
            yield
            return
        with _output_to(log_file):
            yield
    finally:
        _cell = previous


def output_to(log_file: Path) -> None:
    """From now on, file descriptors 1 and 2 (what C libraries, warnings and tqdm write to) go to log_file."""
    Path(log_file).parent.mkdir(parents=True, exist_ok=True)
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    fd = os.open(log_file, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o666)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)


@contextlib.contextmanager
def _output_to(log_file: Path) -> Iterator[None]:
    """output_to(log_file) for the time of the block, then back to where they went before."""
    saved = [os.dup(1), os.dup(2)]
    try:
        output_to(log_file)
        yield
    finally:
        for stream in (sys.stdout, sys.stderr):
            stream.flush()
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for f in saved:
            os.close(f)


# ---------------------------------------------------------------------------------------- the views

@dataclass
class _State:
    text: str = "waiting"
    done: int | None = None
    total: int | None = None
    unit: str = ""
    since: float = 0.0
    quarter: int = -1  # the last quarter a LineView printed


def _own_stdout():
    """(a stream on a copy of file descriptor 1 as it is now, True), or (sys.stdout, False) where it has none."""
    try:
        fd = sys.stdout.fileno()
    except (AttributeError, OSError, ValueError):  # a notebook's or a test's stand-in for stdout
        return sys.stdout, False
    sys.stdout.flush()
    return open(os.dup(fd), "w", encoding="utf-8", errors="replace", closefd=True), True


def _clock(seconds: float) -> str:
    m, s = divmod(int(seconds), 60)
    return f"{m // 60}:{m % 60:02d}:{s:02d}" if m >= 60 else f"{m}:{s:02d}"


class _View:
    """What both views share: one state per cell, a lock (events come from a queue thread and from the
    main thread), and the stream they write to, opened on a copy of this process's stdout as it is now
    (a cell's output redirected later never reaches it)."""

    def __init__(self, title: str, cells: list[str], stream=None):
        self.title, self.start = title, time.monotonic()
        self.states = {c: _State(since=self.start) for c in cells}
        self.lock = threading.Lock()
        self.changed = threading.Condition(self.lock)
        self.out, self._own = (stream, False) if stream is not None else _own_stdout()

    def __call__(self, event: Event) -> None:
        with self.lock:
            if event.message is not None:
                self.on_message(event.message)
                return
            state = self.states.setdefault(event.cell or self.title, _State(since=time.monotonic()))
            if state.text.startswith(FINISHED):  # a cell's last events may arrive after the run marked it finished
                return
            if event.text is not None and event.text != state.text:
                state.text, state.done, state.total, state.unit = event.text, None, None, ""
                state.since, state.quarter = time.monotonic(), -1
                self.on_phase(event.cell or self.title, state)
            if event.total is not None:
                state.done, state.total, state.unit = event.done, event.total, event.unit or state.unit
                self.on_count(event.cell or self.title, state)
            self.changed.notify_all()

    def wait_finished(self, timeout_s: float) -> bool:
        """Wait until every cell has reported how it ended (its earlier events came before it)."""
        with self.changed:
            return self.changed.wait_for(lambda: all(s.text.startswith(FINISHED) for s in self.states.values()),
                                         timeout_s)

    def counts(self) -> str:
        finished = sum(1 for s in self.states.values() if s.text.startswith(FINISHED))
        return f"{finished} of {len(self.states)} cells finished"

    def close(self) -> None:
        with self.lock:
            self.on_close()
            self.out.flush()
            if self._own:
                self.out.close()

    def on_message(self, text: str) -> None: ...
    def on_phase(self, cell: str, state: _State) -> None: ...
    def on_count(self, cell: str, state: _State) -> None: ...
    def on_close(self) -> None: ...


class LineView(_View):
    """One plain line per event: for logs, where a redrawn line would be a pile of control characters."""

    def _line(self, text: str) -> None:
        self.out.write(f"[{_clock(time.monotonic() - self.start)}] {text}\n")
        self.out.flush()

    def on_message(self, text: str) -> None:
        self.out.write(text + "\n")
        self.out.flush()

    def on_phase(self, cell: str, state: _State) -> None:
        self._line(f"{cell}: {state.text}" + (f" ({self.counts()})" if state.text.startswith(FINISHED) else ""))

    def on_count(self, cell: str, state: _State) -> None:
        """A line at each quarter of a phase's count passed (25%, 50%, 75%, all of it)."""
        if not state.total:
            return
        quarter = 4 * state.done // state.total
        if quarter > state.quarter:
            if quarter > 0:
                self._line(f"{cell}: {state.text} {state.done}/{state.total} {state.unit}".rstrip())
            state.quarter = quarter


class LiveView(_View):
    """One line per cell, redrawn in place under the messages (a terminal)."""

    MIN_INTERVAL_S = 0.2
    BAR = 16

    def __init__(self, title: str, cells: list[str], stream=None):
        super().__init__(title, cells, stream)
        self.drawn, self.last = 0, 0.0
        self.ticker = threading.Thread(target=self._tick, daemon=True)  # the clocks move while a step computes
        self.stopped = threading.Event()
        self.ticker.start()

    def _tick(self) -> None:
        while not self.stopped.wait(1.0):
            with self.lock:
                if not self.stopped.is_set():
                    self._draw(force=True)

    def lines(self) -> list[str]:
        now = time.monotonic()
        width = max(40, shutil.get_terminal_size((100, 24)).columns - 1)  # a wrapped line would break the redraw
        name_w = max([len(c) for c in self.states] + [4])
        out = [f"{self.title}: {self.counts()}, {_clock(now - self.start)}"]
        for cell, s in self.states.items():
            line = f"  {cell:<{name_w}}  {s.text:<28}"
            if s.total:
                filled = self.BAR * s.done // s.total
                line += f" [{'#' * filled}{'.' * (self.BAR - filled)}] {s.done}/{s.total} {s.unit}"
            if s.text != "waiting" and not s.text.startswith(FINISHED):
                line += f"  {_clock(now - s.since)}"
            out.append(line[:width])
        return out

    def _draw(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self.last < self.MIN_INTERVAL_S:
            return
        self.last = now
        up = f"\x1b[{self.drawn}F" if self.drawn else ""  # to the block's first line, then clear to the end
        block = self.lines()
        self.out.write(up + "\x1b[J" + "\n".join(block) + "\n")
        self.out.flush()
        self.drawn = len(block)

    def on_message(self, text: str) -> None:
        up = f"\x1b[{self.drawn}F\x1b[J" if self.drawn else ""
        self.out.write(up + text + "\n")
        self.drawn = 0
        self._draw(force=True)

    def on_phase(self, cell: str, state: _State) -> None:
        self._draw(force=True)

    def on_count(self, cell: str, state: _State) -> None:
        self._draw(force=state.done == state.total)

    def on_close(self) -> None:
        self.stopped.set()
        self._draw(force=True)


def view(title: str, cells: list[str], stream=None) -> _View:
    """The view for this process's stdout: live on a terminal, plain lines anywhere else."""
    target = stream or sys.stdout
    live = target.isatty() and os.environ.get("TERM", "") != "dumb"
    return (LiveView if live else LineView)(title, cells, stream)

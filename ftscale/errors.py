"""Errors that carry a user-facing message; the CLI prints them without a traceback."""


class FtscaleError(Exception):
    """Bad input or a missing prerequisite, explained in one sentence."""


class ConfigError(FtscaleError):
    """A config file is invalid: unknown key, wrong type, missing file."""


class DataError(FtscaleError):
    """A dataset line is invalid; the message starts with `file:line:`."""


class StepsFailed(Exception):
    """The command finished, but some steps (requests, evaluations, cells) failed: exit code 1.
    Their results were not recorded as done, so running the same command again redoes them."""


def run_command(fn, interrupted: str = "interrupted: finished steps are kept; run the same command again to resume") -> int:
    """Run a command-line entry point: a FtscaleError prints its message (exit 2, bad input refused
    before any work), StepsFailed what failed (exit 1), Ctrl-C what happens next (exit 130); none
    shows a traceback. SIGTERM (a scheduler's time limit) and SIGHUP (a closed terminal) stop it as
    Ctrl-C does, every child process included (ftscale/children.py), and exit 143 and 129 (128 + the
    signal, as a shell reports a process the signal ended)."""
    import sys

    # imported here: this module is a leaf that every other imports
    from .children import Terminated, signals_as_interrupt, terminate_descendants

    try:
        with signals_as_interrupt():
            return fn() or 0
    except StepsFailed as e:
        print(f"failed: {e}", file=sys.stderr)
        return 1
    except FtscaleError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as e:
        terminate_descendants()  # a child the unwinding did not stop (a pool's worker) is stopped here
        signum = e.signum if isinstance(e, Terminated) else 2
        try:
            print(f"{interrupted} ({e.args[0]})" if isinstance(e, Terminated) else interrupted, file=sys.stderr)
        except OSError:  # SIGHUP: the terminal may be gone
            pass
        return 128 + signum

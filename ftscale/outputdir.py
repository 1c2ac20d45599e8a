"""ftscale deletes only what it wrote: the check a command makes before it writes a whole folder
(`atomic_dir` renames an existing folder aside and deletes it).

A command may write a folder that is absent or empty, or replace one that an earlier run of the same
command wrote: its manifest says so, and the folder holds nothing the manifest does not list. Any
other folder (a user's home, a project, the working directory) is refused before any work starts,
with what to do instead. `ftscale merge` and `make offline-bundle` check their `--output-dir` here.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable, Iterable

from .errors import FtscaleError


def _listed_files(out: Path) -> set[str]:
    return {str(p.relative_to(out)) for p in out.rglob("*") if p.is_file() or p.is_symlink()}


def check_output_dir(out: str | Path, *, manifest: str, writer: str,
                     written: Callable[[dict], Iterable[str] | None], force: bool | None = None,
                     markers: dict[str, str] | None = None, flag: str = "--output-dir") -> Path:
    """The absolute folder `out` if `writer` may write it, else an FtscaleError saying what to do.

    `manifest`: the file `writer` puts in every folder it writes; `written(manifest's JSON)` names the
    files that earlier run wrote (None: it cannot tell). `force`: None when the command replaces its own
    earlier output anyway, else whether `--force` was given (without it such a folder is refused too).
    `markers`: {file: what it marks}, for a clearer refusal of folders known to be something else."""
    out = Path(out).expanduser().resolve()
    if out.exists() and not out.is_dir():
        raise FtscaleError(f"{flag} {out}: a file, not a folder; choose a new folder")
    if not out.is_dir() or not any(out.iterdir()):
        cwd = Path.cwd().resolve()
        if out == cwd or out in cwd.parents:  # replacing it would pull the folder from under the shell
            raise FtscaleError(f"{flag} {out}: the working directory (or one above it); choose a new folder")
        return out
    marker = next((m for m in markers or {} if (out / m).exists()), None)
    if marker:
        raise FtscaleError(f"{flag} {out}: {markers[marker]} (it has {marker}); choose a new folder")
    never = " (--force never empties such a folder)" if force is not None else ""
    refused = (f"{flag} {out}: the folder is not empty and was not written by {writer} (no {manifest}); "
               f"choose a new or empty folder{never}")
    if not (out / manifest).is_file():
        raise FtscaleError(refused)
    try:
        recorded = json.loads((out / manifest).read_text(encoding="utf-8"))
        listed = written(recorded) if isinstance(recorded, dict) else None
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError):
        raise FtscaleError(refused) from None
    if listed is None:
        raise FtscaleError(f"{flag} {out}: an older {writer} wrote it without listing its files; "
                           "delete the folder yourself or choose another one")
    others = sorted(_listed_files(out) - set(listed) - {manifest})
    if others:
        raise FtscaleError(f"{flag} {out}: holds files {writer} did not write ({', '.join(others[:5])}"
                           f"{', ...' if len(others) > 5 else ''}); move them away or choose another folder")
    if force is False:
        raise FtscaleError(f"{flag} {out}: holds an earlier output of {writer}; pass --force to replace it")
    return out

"""Where ftscale finds its shipped configs and data, and where it keeps prepared models.

From a checkout, the shipped files are the repository's own `configs/` and `data/`; from an
installed wheel they are package data beside this file (pyproject.toml maps both folders into the
package), laid out the same way. A path the user names wins whenever it exists; a relative one that
does not is looked up among the shipped files, so `ftscale run formatting-smollm2-cpu` works from
any folder.
"""

import os
from pathlib import Path

_PACKAGE = Path(__file__).resolve().parent


def _is_checkout(folder: Path) -> bool:
    return (folder / "pyproject.toml").is_file() and (folder / "configs").is_dir() and (folder / "eval").is_dir()


IS_CHECKOUT = _is_checkout(_PACKAGE.parent)
ROOT = _PACKAGE.parent if IS_CHECKOUT else _PACKAGE
CONFIGS = ROOT / "configs"


def models_dir() -> Path:
    """Prepared local checkpoints (the converted embedded model among them): the checkout's models/,
    or the user's cache for an installed ftscale (never inside site-packages)."""
    if IS_CHECKOUT:
        default = ROOT / "models"
    else:
        default = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "ftscale" / "models"
    return Path(os.environ.get("FTSCALE_MODELS_DIR", default))


def shipped(path: str | Path) -> Path:
    """`path` as given when it exists or is absolute; else the shipped file of that relative name
    (`data/formatting/train.jsonl`, `configs/prices.yaml`) when there is one; else `path` unchanged,
    so the caller's "file not found" names what the user wrote."""
    path = Path(path)
    if path.is_absolute() or path.exists():
        return path
    candidate = ROOT / path
    return candidate if candidate.exists() else path


def find_config(ref: str | Path, kind: str) -> Path:
    """A config file named by path, or by name among the shipped `configs/<kind>/` files
    (`formatting-smollm2-cpu` for configs/experiments/formatting-smollm2-cpu.yaml)."""
    path = shipped(ref)
    if path.exists() or Path(ref).suffix in (".yaml", ".yml") or os.sep in str(ref):
        return path
    named = CONFIGS / kind / f"{ref}.yaml"
    return named if named.is_file() else path


def shipped_names(kind: str) -> list[str]:
    """The names of the shipped `configs/<kind>/*.yaml` files, for "did you mean" errors."""
    return sorted(p.stem for p in (CONFIGS / kind).glob("*.yaml"))

"""The run directory of one cell (one training size and seed of an experiment).

    <output_dir>/<experiment>/n0100-seed42/
        config.yaml           the resolved config of this cell
        adapter/              PEFT adapter (absent for n=0, the untrained base)
        train_metrics.json    loss curve, tokens/s, wall time, peak memory, versions, hashes
        eval-<variant>/       generations.jsonl + scores.json, one folder per prompt variant
        eval-hf-t0.7-<variant>/  the same at temperature 0.7 (eval.temperatures)
        probes/               the general-ability probes (eval.probes), asked as written; probes-hf-t0.7/ ...

A file is only trusted when complete: every write is atomic, and train_metrics.json is written
after the adapter, so its presence means the training finished.
"""

from __future__ import annotations

import json
from pathlib import Path

from .errors import FtscaleError

TRAIN_METRICS = "train_metrics.json"


def cell_dir(experiment_dir: Path, n: int, seed: int) -> Path:
    return Path(experiment_dir) / f"n{n:04d}-seed{seed}"


def eval_dir(cell: Path, variant: str, backend: str = "hf") -> Path:
    return Path(cell) / (f"eval-{variant}" if backend == "hf" else f"eval-{backend}-{variant}")


def probe_dir(cell: Path, label: str = "hf") -> Path:
    return Path(cell) / ("probes" if label == "hf" else f"probes-{label}")


def read_json(path: Path) -> dict | None:
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        return None


def trained(cell: Path) -> dict | None:
    """The training metrics of a finished training, else None."""
    return read_json(Path(cell) / TRAIN_METRICS)


def adapter_dir(path: str | Path) -> Path:
    """Accept a run directory or its adapter/ folder; return the folder with adapter_config.json."""
    path = Path(path)
    for candidate in (path, path / "adapter"):
        if (candidate / "adapter_config.json").is_file():
            return candidate.resolve()
    if not path.exists():
        raise FtscaleError(f"adapter {path}: no such directory")
    raise FtscaleError(f"adapter {path}: not a PEFT adapter (no adapter_config.json in it or in {path / 'adapter'})")

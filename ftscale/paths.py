"""Where the project's folders are. ftscale runs from a checkout, like torchtune's recipes."""

import os
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs"


def models_dir() -> Path:
    """Prepared local checkpoints (the converted embedded model among them)."""
    return Path(os.environ.get("FTSCALE_MODELS_DIR", ROOT / "models"))

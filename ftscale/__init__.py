"""ftscale: how much data does a task need before a fine-tuned model beats a prompted one?

This package holds the pieces shared by every stage of the flow (config schema, the chat
dataset format, run directories, model references). The stages themselves live in the
top-level folders `data/`, `train/`, `serve/` and `eval/`, installed as `ftscale.data`,
`ftscale.train`, `ftscale.serve` and `ftscale.eval`.
"""

__version__ = "0.1.0"

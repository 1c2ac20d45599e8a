"""`ftscale models`: list the models, prepare the embedded one."""

from __future__ import annotations

from ftscale import models
from ftscale.errors import FtscaleError


def add_parser(sub) -> None:
    m = sub.add_parser("models", help="list models, prepare the embedded one")
    m.add_argument("action", choices=["list", "prepare"])
    m.add_argument("name", nargs="*")
    m.add_argument("--force", action="store_true", help="convert again even if prepared")
    m.set_defaults(fn=run)


def run(args) -> None:
    if args.action == "list":
        for name in models.registry():
            spec = models.load_spec(name)
            state = ("prepared" if (models.local_dir(name) / models.MANIFEST).is_file() else "not prepared") \
                if spec.gguf else f"hub: {spec.hub_id}"
            print(f"{name:20s} {state:32s} {spec.description}")
        return
    if not args.name:
        raise FtscaleError("models prepare: name a model, e.g. `ftscale models prepare smollm2-135m`")
    for name in args.name:
        models.prepare(name, force=args.force)

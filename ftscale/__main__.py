"""`python -m ftscale ...`, as the offline bundle's launcher runs it."""

from .cli import main

if __name__ == "__main__":  # not when a process of `ftscale run --jobs N` imports it
    raise SystemExit(main())

"""`python -m ftscale ...`, as the offline bundle's launcher runs it."""

from .cli import main

raise SystemExit(main())

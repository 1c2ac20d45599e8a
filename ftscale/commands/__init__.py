"""The subcommands of `ftscale`, one module each (or one per group of closely related ones). Each
module adds its parser with `add_parser(subparsers)` and does the work in `run(args)`, by calling
the module that owns the job."""

"""Errors that carry a user-facing message; the CLI prints them without a traceback."""


class FtscaleError(Exception):
    """Bad input or a missing prerequisite, explained in one sentence."""


class ConfigError(FtscaleError):
    """A config file is invalid: unknown key, wrong type, missing file."""


class DataError(FtscaleError):
    """A dataset line is invalid; the message starts with `file:line:`."""

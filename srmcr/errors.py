"""Errors that are the user's to fix: a setting, a missing file, data without a good record.

``main.py`` prints their message as one line (``error: <message>``) and exits non-zero, without a
traceback; any other exception is a bug and keeps its traceback. Raise them where user input is
validated, with a message that names the setting or file and says what to change. Each is also a
builtin error type (``ValueError``, ``FileNotFoundError``), so callers that catch those still do.
"""


class UserError(Exception):
    """Base of the errors that ``main.py`` reports in one line."""


class ConfigError(UserError, ValueError):
    """A configuration value that cannot work (``sampling.group_size=1``)."""


class DataError(UserError, ValueError):
    """Data that cannot train: no good record, or more bad records than ``max_bad_fraction``."""


class MissingFileError(UserError, FileNotFoundError):
    """A data file, model folder or checkpoint that does not exist."""


class UnreadableCheckpointError(UserError, ValueError):
    """A checkpoint file that exists but cannot be loaded: truncated, corrupt, not a checkpoint."""


class UnwritableError(UserError, OSError):
    """A file or folder the run must write and cannot: a read-only folder, a full disk."""


def require(rules: dict[str, bool]) -> None:
    """The project's one way to check config values: ``{message: condition}``, in order; the
    first false condition raises ``ConfigError(message)``. Each message names the setting, the
    value it got and what to set instead, e.g.

        require({f"sampling.group_size={g}: set it to 2 or more (GRPO compares completions)":
                 g >= 2})
    """
    for message, ok in rules.items():
        if not ok:
            raise ConfigError(message)

"""Errors a user can fix. The CLI prints their message (no traceback) and exits non-zero."""


class MtlrunError(Exception):
    """Base class: the message names the problem and the fix."""


class ConfigError(MtlrunError):
    """A config value that cannot work (unknown name, wrong type, inconsistent settings)."""


class DataError(MtlrunError):
    """Input data that cannot be used as declared (missing file, label out of range, empty split)."""


class TrainingError(MtlrunError):
    """Training went wrong in a way the user must act on (a NaN or infinite loss)."""

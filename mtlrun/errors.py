"""Errors a user can fix. The CLI prints their message (no traceback) and exits non-zero."""


class MtlrunError(Exception):
    """Base class: the message names the problem and the fix."""


class ConfigError(MtlrunError):
    """A config value that cannot work (unknown name, wrong type, inconsistent settings)."""


class DataError(MtlrunError):
    """Input data that cannot be used as declared (missing file, label out of range, empty split)."""


class TrainingError(MtlrunError):
    """Training went wrong in a way the user must act on (a NaN or infinite loss)."""


def check_choice(where: str, value: object, choices: tuple | list) -> None:
    """Raise a ConfigError naming ``where`` when ``value`` is not one of ``choices``."""
    if value not in choices:
        raise ConfigError(f"{where}: '{value}' is not one of {', '.join(map(str, choices))}")


def check_int(where: str, value: object, low: int, allow_none: bool = False) -> None:
    """Raise a ConfigError naming ``where`` unless ``value`` is an int >= ``low`` (or None where allowed)."""
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        also = " or null" if allow_none else ""
        raise ConfigError(f"{where}: expected an integer >= {low}{also}, got {value!r}")

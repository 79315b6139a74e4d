"""User-facing errors: one clear line, exit code 2 at the CLI boundary."""

from __future__ import annotations


class RadprobeError(Exception):
    """Bad input or an unmet precondition the user can fix.

    The message is a single line that names the culprit (file, key, value) and what was expected.
    The CLI prints it without a traceback (unless ``--debug``) and exits with code 2.
    """


class WeightsError(RadprobeError):
    """A checkpoint does not match the backbone it is loaded into, or cannot be obtained."""


class DataError(RadprobeError):
    """A dataset, manifest or image file is missing, unreadable or malformed."""


class OptionError(RadprobeError):
    """A bad value of one setting. The message names the setting as the library knows it
    (``knn.ks=0: expected a value >= 1``); ``flag`` is the command-line flag that sets it
    (``--set``), which only the CLI puts in front. Study files and Python callers see the message."""

    def __init__(self, flag: str, message: str) -> None:
        super().__init__(message)
        self.flag = flag

    def __reduce__(self) -> tuple[type[OptionError], tuple[str, str]]:
        return (type(self), (self.flag, str(self)))

    def for_cli(self) -> str:
        """The message as the command line says it: flag first."""
        return f"{self.flag} {self}" if self.flag else str(self)

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
    """A bad value of one setting, said the way each edge names it.

    ``message`` reads ``<value>: <what was expected>`` for a setting with its own flag (``-1: expected
    a non-negative number``, ``flag="--bootstrap"``, ``setting="n_boot"``), or names a protocol option
    itself (``knn.ks=0: expected a value >= 1``, ``flag="--set"``). Library callers see the setting's
    library name (``n_boot=-1: ...``); the CLI puts the flag in front (``--bootstrap -1: ...``).
    """

    def __init__(self, flag: str, message: str, setting: str = "") -> None:
        self.flag, self.message, self.setting = flag, message, setting
        super().__init__(f"{setting}={message}" if setting else message)

    def __reduce__(self) -> tuple[type[OptionError], tuple[str, str, str]]:
        return (type(self), (self.flag, self.message, self.setting))

    def for_cli(self) -> str:
        """The message as the command line says it: flag first."""
        return f"{self.flag} {self.message}" if self.flag else str(self)

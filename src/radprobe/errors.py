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

"""Protocol names → runners."""

from __future__ import annotations

from collections.abc import Callable

from radprobe.errors import RadprobeError
from radprobe.protocols import fewshot, knn, linear, logreg
from radprobe.protocols.base import ProtocolInput, ProtocolResult

PROTOCOLS: dict[str, Callable[..., ProtocolResult]] = {
    "knn": knn.run,
    "linear": linear.run,
    "logreg": logreg.run,
    "fewshot": fewshot.run,
}


def get_protocol(name: str) -> Callable[[ProtocolInput], ProtocolResult]:
    """The runner of protocol ``name``; unknown names raise a one-line error listing the known ones."""
    try:
        return PROTOCOLS[name]
    except KeyError:
        raise RadprobeError(
            f"unknown protocol {name!r}; expected one of: {', '.join(sorted(PROTOCOLS))}"
        ) from None

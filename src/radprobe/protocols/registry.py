"""Protocol names → runners."""

from __future__ import annotations

from collections.abc import Callable

from radprobe.errors import RadprobeError
from radprobe.protocols import fewshot, knn, linear, logreg, mil
from radprobe.protocols.base import ProtocolInput, ProtocolResult

PROTOCOLS: dict[str, Callable[..., ProtocolResult]] = {
    "knn": knn.run,
    "linear": linear.run,
    "logreg": logreg.run,
    "fewshot": fewshot.run,
    "mil": mil.run,
}
# Protocols that read each volume's slice features (bags) rather than pooled rows: 3D datasets only,
# and the volume pooling option does not apply to them.
VOLUME_PROTOCOLS = frozenset({"mil"})


def get_protocol(name: str) -> Callable[[ProtocolInput], ProtocolResult]:
    """The runner of protocol ``name``; unknown names raise a one-line error listing the known ones."""
    try:
        return PROTOCOLS[name]
    except KeyError:
        raise RadprobeError(
            f"unknown protocol {name!r}; expected one of: {', '.join(sorted(PROTOCOLS))}"
        ) from None

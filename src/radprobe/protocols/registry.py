"""Protocol names → runners."""

from __future__ import annotations

import types
import typing
from collections import abc
from collections.abc import Callable
from typing import Any

from radprobe.errors import RadprobeError
from radprobe.protocols import fewshot, knn, linear, logreg, mil
from radprobe.protocols.base import ProtocolInput, ProtocolResult
from radprobe.utils import check_scalar

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


def check_options(name: str, options: dict[str, Any]) -> dict[str, Any]:
    """Protocol ``name``'s options checked against its runner's annotations, before anything runs:
    a bad value is one line naming the option and what it takes. A single value where a list is
    taken becomes a one-item list, and an integral float (``1e2``) an int where an int is taken;
    everything else is passed on as given (so result keys do not change)."""
    hints = typing.get_type_hints(get_protocol(name))
    return {
        k: _coerce(v, hints[k], f"--set {name}.{k}={v!r}") if k in hints else v for k, v in options.items()
    }


def _coerce(value: Any, hint: Any, where: str) -> Any:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        inner = [a for a in args if a is not type(None)]
        if value is None and len(inner) < len(args):
            return None
        return _coerce(value, inner[0], where) if len(inner) == 1 else value
    if origin is typing.Literal:
        if value not in args:
            raise RadprobeError(f"{where}: expected one of {', '.join(map(str, args))}")
        return value
    if origin in (abc.Sequence, list, tuple):
        values = list(value) if isinstance(value, list | tuple) else [value]
        if not values:
            raise RadprobeError(f"{where}: expected at least one value")
        return [_coerce(v, args[0] if args else Any, where) for v in values]
    return check_scalar(value, hint, where) if hint in (bool, int, float, str) else value

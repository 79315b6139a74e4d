"""Small shared helpers: stable digests and atomic file writes."""

from __future__ import annotations

import functools
import hashlib
import json
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from radprobe.errors import OptionError


def stable_json(obj: Any) -> str:
    """JSON with sorted keys and no whitespace, so equal objects give equal strings."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)


def digest(obj: Any, length: int = 16) -> str:
    """Short hex sha256 of an object's stable JSON form."""
    return hashlib.sha256(stable_json(obj).encode()).hexdigest()[:length]


def file_sha256(path: str | os.PathLike[str], chunk: int = 1 << 20) -> str:
    """Full hex sha256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


@contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def atomic_write_text(path: str | os.PathLike[str], text: str) -> None:
    """Write text to ``path`` atomically (temp file + rename)."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def check_scalar(value: Any, kind: type, where: str) -> Any:
    """A protocol option's ``value`` checked as a ``kind`` (bool, int, float or str): one line naming
    ``where`` (``knn.ks=...``; ``--set`` on the command line) and what it takes if it is not one.
    An integral float (``1e2``, as YAML reads it) is taken as an int; anything else comes back as
    given."""
    if kind is bool and not isinstance(value, bool):
        raise OptionError("--set", f"{where}: expected true or false")
    if kind is int:
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, bool) or not isinstance(value, int):
            raise OptionError("--set", f"{where}: expected an integer")
    if kind is float and (isinstance(value, bool) or not isinstance(value, int | float)):
        raise OptionError("--set", f"{where}: expected a number")
    if kind is str and not isinstance(value, str):
        raise OptionError("--set", f"{where}: expected a string")
    return value


def load_yaml(text: str) -> Any:
    """``yaml.safe_load`` that also reads ``1e-3`` as a number.

    PyYAML follows YAML 1.1, where a float needs a dot (``1.0e-3``), so a learning rate written
    ``1e-3`` in a study file or ``--set`` arrived as the string "1e-3"; YAML 1.2 reads it as a float.
    """
    import yaml

    return yaml.load(text, Loader=_yaml_loader())  # a SafeLoader subclass: no arbitrary objects


@functools.cache
def _yaml_loader() -> Any:
    import re

    import yaml

    class Loader(yaml.SafeLoader):
        pass

    # add_implicit_resolver copies the parent's table first, so yaml.SafeLoader is left as it is
    Loader.add_implicit_resolver(
        "tag:yaml.org,2002:float",
        re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
        list("-+0123456789"),
    )
    return Loader

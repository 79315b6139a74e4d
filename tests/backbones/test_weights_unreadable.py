"""A weights file that is no checkpoint at all is named in one line that says so."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from radprobe.backbones.weights import read_state_dict
from radprobe.errors import WeightsError

CASES = [
    ("empty.pth", b"", "the file is empty, not a checkpoint"),
    ("empty.pt", b"", "the file is empty, not a checkpoint"),
    ("empty.safetensors", b"", "the file is empty, not a checkpoint"),
    ("noise.pth", random.Random(0).randbytes(4096), "not a torch checkpoint"),
    ("text.pt", b"hello world\n", "not a torch checkpoint"),
    ("zip.pt", b"PK\x03\x04 not really", "not a torch checkpoint"),
]


@pytest.mark.parametrize(("name", "content", "says"), CASES, ids=[c[0] for c in CASES])
def test_unreadable_weights_name_the_file(tmp_path: Path, name: str, content: bytes, says: str) -> None:
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(WeightsError) as info:
        read_state_dict(path)
    message = str(info.value)
    assert str(path) in message and says in message and "\n" not in message
    assert "EOFError" not in message

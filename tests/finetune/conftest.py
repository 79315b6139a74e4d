"""Fine-tuning tests run with one torch thread."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    # Two shared cores: more than one intra-op thread per test process only adds contention (the
    # tiny models train ~10x slower with two threads on a busy machine).
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)

"""Fixtures shared by the test files."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch

pytest.register_assert_rewrite("_helpers")  # its asserts explain themselves as the tests' own do


@pytest.fixture(scope="module")
def one_thread() -> Iterator[None]:
    """Tiny problems: one torch thread is fastest and keeps a shared machine steady (restored afterwards)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)

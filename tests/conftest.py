"""Shared test set-up."""

from __future__ import annotations

import sys

import pytest


@pytest.fixture(autouse=True)
def _two_threads():
    """Torch runs on this machine's two cores, whatever its default; modules with tiny tensors
    lower it further with a fixture of their own (which runs after this one)."""
    torch = sys.modules.get("torch")
    if torch is None:  # the torch-free tests never import it
        yield
        return
    previous = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(previous)


@pytest.fixture
def one_thread():
    """For modules of tiny tensors (`pytestmark = pytest.mark.usefixtures("one_thread")`):
    thread start-up costs more than the work."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)

"""torch's own account of memory, for the oracle tests of resgen.memory (issue 18).

saved_bytes      the distinct storages autograd saves in one training forward pass, as
                 torch.autograd.graph.saved_tensors_hooks sees them, parameters and buffers
                 excluded (autocast's copies of them are not parameters: they count)
inference_peak   the largest total of live tensor storages during a no-grad forward pass: every
                 tensor an aten op returns is recorded (a TorchDispatchMode) and dropped when its
                 storage is freed (weakref.finalize on the storage); the input batch is counted
"""

from __future__ import annotations

import contextlib
import weakref

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten


def _state_storages(model: torch.nn.Module) -> set[int]:
    tensors = [*model.parameters(), *model.buffers()]
    return {t.untyped_storage().data_ptr() for t in tensors}


def _autocast(dtype: torch.dtype | None, device: str = "cpu"):
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device, dtype=dtype)


def saved_bytes(
    model: torch.nn.Module, x: torch.Tensor, autocast: torch.dtype | None = None
) -> int:
    """Bytes of the distinct storages saved for backward in one training forward pass."""
    model.train()
    excluded = _state_storages(model)
    seen: dict[int, int] = {}

    def pack(tensor: torch.Tensor):
        storage = tensor.untyped_storage()
        pointer = storage.data_ptr()
        if pointer not in excluded:
            seen[pointer] = storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), _autocast(autocast):
        output = model(x)
    del output
    return sum(seen.values())


class _LiveStorages(TorchDispatchMode):
    """Live bytes of the storages aten ops return, parameters and buffers excluded."""

    def __init__(self, excluded: set[int]):
        super().__init__()
        self.excluded = excluded
        self.live: dict[int, int] = {}  # id of the storage object -> bytes
        self.total = 0
        self.peak = 0

    def track(self, tensor: torch.Tensor) -> None:
        storage = tensor.untyped_storage()
        key = id(storage)
        if key in self.live or storage.data_ptr() in self.excluded or storage.nbytes() == 0:
            return
        self.live[key] = storage.nbytes()
        self.total += storage.nbytes()
        weakref.finalize(storage, self._free, key)

    def _free(self, key: int) -> None:
        self.total -= self.live.pop(key)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for item in tree_flatten(out)[0]:
            if isinstance(item, torch.Tensor):
                self.track(item)
        self.peak = max(self.peak, self.total)
        return out


def inference_peak(
    model: torch.nn.Module, x: torch.Tensor, autocast: torch.dtype | None = None
) -> int:
    """The most bytes of live tensor storages at any moment of an eval-mode, no-grad forward
    pass (measured after each aten op), the input batch included."""
    model.eval()
    mode = _LiveStorages(_state_storages(model))
    mode.track(x)
    mode.peak = mode.total
    with torch.no_grad(), _autocast(autocast), mode:
        output = model(x)
    peak = mode.peak
    del output
    return peak


def optimizer(name: str, params) -> torch.optim.Optimizer:
    """torch.optim's optimizer for resgen's --optimizer NAME, at torch's defaults."""
    return {
        "sgd": lambda: torch.optim.SGD(params, lr=0.1),
        "momentum": lambda: torch.optim.SGD(params, lr=0.1, momentum=0.9),
        "adam": lambda: torch.optim.Adam(params),
        "adamw": lambda: torch.optim.AdamW(params),
    }[name]()

"""What a memory estimate is for: the batch size, the dtypes, the optimizer and the device.

Light on purpose (the command line builds its options from it before anything is analysed).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from resgen.ops.base import Device

DTYPE_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2, "int64": 8, "bool": 1}
FLOATS = ("float32", "bfloat16", "float16")  # what --dtype accepts


@dataclass(frozen=True)
class Precision:
    """The dtypes of one run. `dtype` casts the whole model (`model.to(dtype)`, inputs in it);
    with `amp` (torch.autocast) parameters, buffers and inputs stay float32 and `dtype` is the
    low precision autocast computes convolutions and linear layers in."""

    dtype: str = "float32"
    amp: bool = False

    @property
    def param_dtype(self) -> str:
        return "float32" if self.amp else self.dtype

    @property
    def input_dtype(self) -> str:
        return "float32" if self.amp else self.dtype

    def compute_dtype(self, autocast: str | None, incoming: str) -> str:
        """The dtype an op computes in, given autocast's rule for it and its input's dtype."""
        if not self.amp or autocast is None:
            return incoming
        return self.dtype if autocast == "lower" else "float32"


def promote(a: str, b: str) -> str:
    """torch's type promotion of two floating dtypes: equal ones stay; float32 wins; bfloat16
    with float16 gives float32."""
    return a if a == b else "float32"


Optimizer = Literal["sgd", "momentum", "adam", "adamw"]
OPTIMIZERS: dict[str, str] = {
    "sgd": "SGD (no state)",
    "momentum": "SGD with momentum (momentum_buffer per parameter)",
    "adam": "Adam (exp_avg, exp_avg_sq per parameter; a float32 step per tensor)",
    "adamw": "AdamW (exp_avg, exp_avg_sq per parameter; a float32 step per tensor)",
}
STATE_BUFFERS = {"sgd": 0, "momentum": 1, "adam": 2, "adamw": 2}
STEP_BYTES = 4  # torch.optim's `step`: torch.tensor(0.0, dtype=_get_scalar_dtype()), float32
DEVICES = ("cuda", "cpu")
# torch.autocast's default low precision per device
AUTOCAST_DEFAULT = {"cuda": "float16", "cpu": "bfloat16"}


@dataclass(frozen=True)
class Settings:
    """What one estimate is for: the batch size, the dtypes (`dtype` casts the model; `amp` is
    mixed precision with `dtype` as autocast's low precision), the optimizer and the device
    (CUDA and the CPU differ in dropout's saved mask and in the optimizer step's temporaries)."""

    batch: int = 1
    dtype: str = "float32"
    amp: bool = False
    optimizer: Optimizer = "momentum"
    device: Device = "cuda"

    def __post_init__(self):
        if self.dtype not in FLOATS:
            raise ValueError(f"dtype is one of {', '.join(FLOATS)}, not {self.dtype!r}")
        if self.amp and self.dtype == "float32":
            raise ValueError(
                "mixed precision (amp) needs a low-precision dtype: bfloat16 or float16"
            )
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer is one of {', '.join(OPTIMIZERS)}, not {self.optimizer!r}")
        if self.device not in DEVICES:
            raise ValueError(f"device is one of {', '.join(DEVICES)}, not {self.device!r}")
        if self.batch < 1:
            raise ValueError(f"batch is at least 1, not {self.batch}")

    @property
    def precision(self) -> Precision:
        return Precision(self.dtype, self.amp)

    def as_dict(self) -> dict:
        return {
            "batch": self.batch,
            "dtype": self.dtype,
            "amp": self.amp,
            "optimizer": self.optimizer,
            "device": self.device,
        }

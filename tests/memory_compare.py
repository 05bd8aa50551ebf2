"""resgen's memory estimate next to torchinfo's and torch's own for torchvision's ResNets.

Not collected by pytest. Run from the repository root (about two minutes on two cores):

    python3 tests/memory_compare.py                       # resnet18, 50, 152 at batch 256
    python3 tests/memory_compare.py --batch 64 --dtype bfloat16 --optimizer adamw

For each model:
  resgen      `resgen summary specs/NAME.arch --batch B --train` (no torch): saved activations
              and the training peak estimate (README, Memory), on the CPU (`--device cpu`, as
              the estimators below run there)
  torchinfo   torchinfo.summary's "Forward/backward pass size": the output size of every leaf
              module with parameters, counted twice ("x2 for gradients"), at batch 1 times B (it
              is linear in B)
  MemTracker  torch.distributed._tools.mem_tracker.MemTracker: every allocation of two training
              steps (forward, backward, optimizer.step, zero_grad) of torchvision's model under
              FakeTensorMode (no data, no compute), the input batch created inside it; its peak
              is torch's own estimate of the training peak
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MODELS = ("resnet18", "resnet50", "resnet152")


def resgen_estimate(name: str, batch: int, dtype: str, optimizer: str, amp: bool = False):
    from resgen.memory import estimate
    from resgen.precision import Settings
    from resgen.resolve import load
    from resgen.shapes import analyse

    spec = load(ROOT / "specs" / f"{name}.arch")
    return estimate(spec, analyse(spec), Settings(batch, dtype, amp, optimizer, "cpu"))


def torchinfo_size(name: str, batch: int, dtype: str) -> int:
    """torchinfo's forward/backward pass size in bytes (total_output_bytes)."""
    import torch
    import torchinfo
    import torchvision

    model = getattr(torchvision.models, name)().to(getattr(torch, dtype))
    stats = torchinfo.summary(
        model, input_size=(1, 3, 224, 224), dtypes=[getattr(torch, dtype)], verbose=0
    )
    return stats.total_output_bytes * batch


def memtracker_peak(
    name: str, batch: int, dtype: str, optimizer: str, amp: bool = False
) -> dict[str, int]:
    """MemTracker's peak snapshot of a training step (bytes per category, and "Total"); with
    `amp`, float32 parameters and the forward pass under torch.autocast("cpu", dtype)."""
    import contextlib

    import torch
    import torchvision
    from memory_oracle import optimizer as make_optimizer
    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch.distributed._tools.mem_tracker import MemTracker

    torch_dtype = getattr(torch, dtype)
    autocast = torch.autocast("cpu", dtype=torch_dtype) if amp else contextlib.nullcontext()
    if amp:
        torch_dtype = torch.float32
    default = torch.get_default_dtype()
    torch.set_default_dtype(torch_dtype)  # model.to(dtype) cannot swap fake parameters
    try:
        with FakeTensorMode():
            model = getattr(torchvision.models, name)()
    finally:
        torch.set_default_dtype(default)
    with model.parameters().__next__().fake_mode:
        opt = make_optimizer(optimizer, model.parameters())
        tracker = MemTracker()
        tracker.track_external(model, opt)
        with tracker:
            x = torch.randn(batch, 3, 224, 224, dtype=torch_dtype)
            for step in range(2):
                with autocast:
                    loss = model(x).sum()
                loss.backward()
                opt.step()
                opt.zero_grad()
                if step == 0:
                    tracker.reset_mod_stats()
        snapshot = tracker.get_tracker_snapshot("peak")
    totals: dict[str, int] = {}
    for per_device in snapshot.values():
        for kind, value in per_device.items():
            key = str(kind).rsplit(".", 1)[-1]
            totals[key] = totals.get(key, 0) + value
    return totals


def compare(name: str, batch: int, dtype: str, optimizer: str, amp: bool = False) -> dict:
    memory = resgen_estimate(name, batch, dtype, optimizer, amp)
    tracked = memtracker_peak(name, batch, dtype, optimizer, amp)
    return {
        "model": name,
        "resgen_saved": memory.activations_saved_bytes,
        "resgen_peak": memory.training_peak_bytes,
        "torchinfo": torchinfo_size(name, batch, "float32" if amp else dtype),
        "memtracker_peak": tracked["Total"],
        "memtracker_act": tracked.get("ACT", 0),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16", "float16"))
    parser.add_argument(
        "--optimizer", default="momentum", choices=("sgd", "momentum", "adam", "adamw")
    )
    parser.add_argument("--amp", action="store_true", help="mixed precision, autocast to --dtype")
    parser.add_argument("models", nargs="*", default=list(MODELS))
    args = parser.parse_args()
    from resgen.text import bytes_text

    precision = f"mixed precision ({args.dtype})" if args.amp else args.dtype
    print(f"batch {args.batch}, {precision}, {args.optimizer}, 3x224x224 (GiB = 2^30 bytes)")
    print(
        f"{'model':<10} {'resgen saved':>13} {'resgen peak':>12} {'MemTracker':>11} "
        f"{'difference':>10} {'torchinfo f/b':>14}"
    )
    for name in args.models:
        row = compare(name, args.batch, args.dtype, args.optimizer, args.amp)
        difference = (row["resgen_peak"] - row["memtracker_peak"]) / row["memtracker_peak"]
        saved, peak = bytes_text(row["resgen_saved"]), bytes_text(row["resgen_peak"])
        tracked, info = bytes_text(row["memtracker_peak"]), bytes_text(row["torchinfo"])
        print(
            f"{name:<10} {saved:>13} {peak:>12} {tracked:>11} {difference:>+10.2%} {info:>14}",
            flush=True,
        )


if __name__ == "__main__":
    sys.path[:0] = [str(ROOT), str(ROOT / "tests")]
    main()

"""Training scales out on torch's own distributed engine (issue 17): a generated model trained
for a few SGD steps under DistributedDataParallel (gloo, 2 processes on the CPU, each with half
of the global batch) ends with the parameters of a single-process run on the whole batch.

The model normalises with GroupNorm: batch norm computes its statistics per replica (two
half-batches give other means than the whole batch) and SyncBatchNorm needs a GPU, so a batch
norm model would differ for a reason that is not DDP's; GroupNorm's statistics are per sample.
"""

from __future__ import annotations

import pytest

import resgen

torch = pytest.importorskip("torch")
dist = pytest.importorskip("torch.distributed")

SPEC = """\
block GnBlock(planes, stride = 1) {
    main {
        conv1 = conv(planes, 3, stride=stride, padding=1, bias=false)
        gn1 = groupnorm(4)
        act = relu(inplace=true)
        conv2 = conv(planes, 3, padding=1, bias=false)
        gn2 = groupnorm(4)
    }
    shortcut downsample when stride != 1 or in_channels != planes {
        conv(planes, 1, stride=stride, bias=false)
        groupnorm(4)
    }
    merge add
    post { act }
}

network gn_net {
    input 3x16x16
    stem { conv1 = conv(8, 3, padding=1, bias=false)  gn1 = groupnorm(4)  act1 = relu }
    stage layer1 = 1 x GnBlock(8)
    stage layer2 = 1 x GnBlock(16, stride=2)
    head { pool = adaptive_avgpool(1)  flatten = flatten  fc = linear(5) }
}
"""
STEPS, BATCH = 3, 8


def _train(model, images, labels, steps=STEPS):
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    for _ in range(steps):
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(model(images), labels).backward()
        optimizer.step()


def _worker(rank: int, spec: str, store: str, start: str, out: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=2)
    try:
        model = resgen.build_module(spec)
        model.load_state_dict(torch.load(start))
        images, labels = torch.load(start + ".batch")
        half = slice(rank * BATCH // 2, (rank + 1) * BATCH // 2)
        ddp = torch.nn.parallel.DistributedDataParallel(model)
        _train(ddp, images[half], labels[half])
        if rank == 0:
            torch.save(model.state_dict(), out)
    finally:
        dist.destroy_process_group()


@pytest.mark.slow  # two processes that set up gloo; in the default run
def test_ddp_two_processes_match_one_process(tmp_path):
    spec = tmp_path / "gn_net.arch"
    spec.write_text(SPEC, encoding="utf-8")
    torch.manual_seed(0)
    model = resgen.build_module(spec)
    images, labels = torch.randn(BATCH, 3, 16, 16), torch.randint(0, 5, (BATCH,))
    start = str(tmp_path / "start.pt")
    torch.save(model.state_dict(), start)
    torch.save((images, labels), start + ".batch")
    out = str(tmp_path / "ddp.pt")
    # fork: the workers need not import torch and resgen again (spawn takes ~10x longer)
    torch.multiprocessing.start_processes(
        _worker,
        args=(str(spec), str(tmp_path / "store"), start, out),
        nprocs=2,
        join=True,
        start_method="fork",
    )
    _train(model, images, labels)  # one process, the whole batch
    trained = torch.load(out)
    assert trained.keys() == model.state_dict().keys()
    for key, value in model.state_dict().items():
        torch.testing.assert_close(trained[key], value, rtol=1e-4, atol=1e-5, msg=key)
    # and the steps did move the weights
    assert not torch.equal(trained["fc.weight"], torch.load(start)["fc.weight"])

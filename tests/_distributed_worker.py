"""One process of tests/test_distributed.py: every method of the registry, 5 steps on this rank's half
of each batch, under torch.distributed (gloo, file:// rendezvous, loopback).  Also imported by the
test, which runs the same steps in one process on the whole batches (the reference).

Usage: python tests/_distributed_worker.py RANK WORLD_SIZE INIT_FILE OUT_FILE
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn

from _helpers import Net as SharedNet  # tests/ is on the path: pytest's pythonpath, or this script's folder

NUM_TASKS = 3
STEPS = 5
BATCH = 16
IN, HIDDEN = 5, 8


class Net(SharedNet):
    """The shared net on a trunk IN-HIDDEN, float64, seeding the global RNG (every rank draws PCGrad's order
    from it); calling it gives the heads' outputs."""

    def __init__(self) -> None:
        super().__init__(NUM_TASKS, widths=(IN, HIDDEN), seed_globally=True)


def batch(step: int, shard: slice) -> tuple[Tensor, Tensor]:
    """Batch ``step`` (the same on every process), cut to ``shard``."""
    g = torch.Generator().manual_seed(100 + step)
    x = torch.randn(BATCH, IN, generator=g, dtype=torch.float64)
    y = torch.randn(BATCH, NUM_TASKS, generator=g, dtype=torch.float64) * torch.tensor(
        [1.0, 10.0, 0.1], dtype=torch.float64
    )
    return x[shard], y[shard]


def task_losses(outputs: Sequence[Tensor], y: Tensor) -> list[Tensor]:
    """Mean squared errors: the mean over a half-batch, averaged over two equal halves, is the whole's."""
    return [(out - y[:, k]).pow(2).mean() for k, out in enumerate(outputs)]


def train(name: str, shard: slice, model: nn.Module | None = None, **options: object) -> list[Tensor]:
    """``make(name)`` stepped ``STEPS`` times on ``shard`` of each batch; the final parameters."""
    from mao_lab.methods import make

    net = model if model is not None else Net()
    method = make(name, net.parameters(), lr=1e-2, **options)
    for step in range(STEPS):
        x, y = batch(step, shard)
        closure: Callable[[], list[Tensor]] = lambda x=x, y=y: task_losses(net(x), y)
        method.step(closure)
    return [p.detach().clone() for p in Net.parameters(getattr(net, "module", net))]


def train_mao(shard: slice, model: nn.Module | None = None, **options: object) -> list[Tensor]:
    """``mao_lab.MAO`` (the optimizer class) stepped on the losses."""
    from mao_lab import MAO

    net = model if model is not None else Net()
    opt = MAO(net.parameters(), lr=1e-2, **options)
    for step in range(STEPS):
        x, y = batch(step, shard)
        opt.step(task_losses(net(x), y))
    return [p.detach().clone() for p in Net.parameters(getattr(net, "module", net))]


def train_mao_features(shard: slice) -> list[Tensor]:
    """``MAO.step(losses, features=...)``: each head's backward stops at the trunk's output."""
    from mao_lab import MAO

    net = Net()
    opt = MAO(net.parameters(), lr=1e-2)
    for step in range(STEPS):
        x, y = batch(step, shard)
        z = net.trunk(x)
        opt.step(task_losses(tuple(head(z).squeeze(-1) for head in net.heads), y), features=z)
    return [p.detach().clone() for p in net.parameters()]


def overflow_on_one_rank(rank: int, shard: slice) -> dict[str, object]:
    """A loss-scaled MAO step whose gradients overflow on rank 0 only: every rank skips it."""
    from mao_lab import MAO

    net = Net().float()
    opt = MAO(net.parameters(), lr=1e-2)
    x, y = batch(0, shard)
    opt.step(task_losses(net(x.float()), y.float()))
    before = [p.detach().clone() for p in net.parameters()]
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**100)
    losses = task_losses(net(x.float()), y.float())
    if rank == 0:
        losses = [loss * 1e30 for loss in losses]  # times 2^100: Inf in float32, on this rank only
    opt.step(losses, grad_scaler=scaler)
    scaler.update()
    unchanged = all(torch.equal(p, q) for p, q in zip(net.parameters(), before))
    return {"skipped": opt.skipped_steps, "unchanged": unchanged, "scale": scaler.get_scale()}


def main(rank: int, world: int, init_file: str, out_file: str) -> None:
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    from mao_lab.methods import available

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    half = BATCH // world
    shard = slice(rank * half, (rank + 1) * half)
    results: dict[str, object] = {name: train(name, shard) for name in available()}
    results["MAO"] = train_mao(shard)
    results["MAO:features"] = train_mao_features(shard)
    results["overflow"] = overflow_on_one_rank(rank, shard)
    # The model as users wrap it: DistributedDataParallel (its own hooks never fire: autograd.grad).
    for name in ("mao", "pcgrad", "mtadam", "uw"):
        results[f"ddp:{name}"] = train(name, shard, DistributedDataParallel(Net()))
    ddp = DistributedDataParallel(Net())
    results["ddp:MAO"] = train_mao(shard, ddp, distributed=ddp)
    # Inside no_sync(): refused (gradient accumulation without synchronisation is not supported).
    try:
        with ddp.no_sync():
            train("mao", shard, ddp, distributed=ddp)
        results["no_sync"] = "no error"
    except RuntimeError as error:
        results["no_sync"] = str(error)
    # distributed=False: each process on its own half-batch (the replicas differ).
    results["off:mao"] = train("mao", shard, distributed=False)
    # A process group given explicitly.
    results["group:pcgrad"] = train("pcgrad", shard, distributed=dist.new_group([0, 1]))
    # Parameters sharded across the processes (DTensor, as FSDP2 makes them): refused.
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import Shard, distribute_tensor

    from mao_lab import MAO
    from mao_lab.methods import make

    mesh = init_device_mesh("cpu", (world,))
    sharded = nn.Parameter(distribute_tensor(torch.ones(4, 2), mesh, [Shard(0)]))
    refusals = []
    for step in (
        lambda: make("mao", [sharded]).step(lambda: [sharded.sum(), 2 * sharded.sum()]),
        lambda: MAO([sharded]).step([sharded.sum(), 2 * sharded.sum()]),
    ):
        try:
            step()
            refusals.append("no error")
        except TypeError as error:
            refusals.append(str(error))
    results["sharded"] = refusals
    dist.barrier()
    dist.destroy_process_group()
    torch.save(results, out_file)


if __name__ == "__main__":
    main(int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4])

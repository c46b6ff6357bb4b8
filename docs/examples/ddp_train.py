# Data-parallel MAO and PCGrad: torchrun --standalone --nproc_per_node=2 docs/examples/ddp_train.py
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP

from mao_lab import MAO
from mao_lab.methods import make
from mao_lab.problems import ImbalancedRegression, regression_model


def train(rank: int, world: int) -> None:
    data = ImbalancedRegression(num_tasks=2, sigmas=[1.0, 100.0], num_samples=2_000)
    model = DDP(regression_model(num_tasks=2))  # DDP starts every process from rank 0's weights
    optimizer = MAO(model.parameters(), lr=1e-3)  # averages over the default group by itself
    other = DDP(regression_model(num_tasks=2))
    pcgrad = make("pcgrad", other.parameters(), lr=1e-3)  # every method of mao_lab.methods does too
    for x, targets in data.batches(batch_size=64, seed=0, drop_last=True):
        mine = slice(rank * len(x) // world, (rank + 1) * len(x) // world)  # this process's share
        x, targets = x[mine], [t[mine] for t in targets]
        optimizer.step(data.task_losses(model(x), targets))
        pcgrad.step(lambda x=x, targets=targets: data.task_losses(other(x), targets))

    for net in (model, other):  # every process holds the same weights, bit for bit
        flat = torch.cat([p.detach().reshape(-1) for p in net.parameters()])
        copies = [torch.empty_like(flat) for _ in range(world)]
        dist.all_gather(copies, flat)
        assert all(torch.equal(copies[0], c) for c in copies)
    if rank == 0:
        print(f"{world} processes, {optimizer.state_dict()['state'][0]['step']:.0f} steps: replicas identical")


dist.init_process_group("gloo")  # "nccl" on GPUs; torchrun sets rank and world size
# In a function, the models and what DDP keeps for them are freed when it returns, while Python still runs; left
# to interpreter shutdown, gloo may abort the process after a successful run.
train(dist.get_rank(), dist.get_world_size())
dist.barrier()
dist.destroy_process_group()

"""The one model shape used by every problem here: a shared trunk and one head per task.

Task-balancing methods need to tell shared parameters (where the tasks compete) from task-specific
ones (where each task trains alone).  Keeping that split explicit in the module tree — ``trunk`` and
``heads`` — lets optimizers, gradient recorders and TorchJD's ``mtl_backward`` all find it the same way.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator

import torch
from torch import Tensor, nn

from .._validate import Int, require

__all__ = ["MultiTaskNet", "seeded_init"]


class MultiTaskNet(nn.Module):
    """Hard parameter sharing: ``heads[k](trunk(x))`` is task ``k``'s output.

    Args:
        trunk: the shared part, mapping inputs to features.
        heads: one module per task, each mapping the features to that task's output.

    >>> net = MultiTaskNet(nn.Linear(3, 4), [nn.Linear(4, 1), nn.Linear(4, 2)])
    >>> [tuple(y.shape) for y in net(torch.zeros(5, 3))]
    [(5, 1), (5, 2)]
    >>> net.num_tasks, len(list(net.shared_parameters())), len(list(net.task_parameters(1)))
    (2, 2, 2)
    """

    trunk: nn.Module
    heads: nn.ModuleList

    def __init__(self, trunk: nn.Module, heads: Iterable[nn.Module]) -> None:
        super().__init__()
        if not isinstance(trunk, nn.Module):
            raise ValueError(f"trunk must be an nn.Module, got {type(trunk).__name__}")
        head_list = list(heads)
        if not head_list:
            raise ValueError("heads must hold at least one module (one per task), got none")
        for k, head in enumerate(head_list):
            if not isinstance(head, nn.Module):
                raise ValueError(f"heads[{k}] must be an nn.Module, got {type(head).__name__}")
        self.trunk = trunk
        self.heads = nn.ModuleList(head_list)

    @property
    def num_tasks(self) -> int:
        """The number of heads, i.e. of tasks."""
        return len(self.heads)

    def features(self, x: Tensor) -> Tensor:
        """The trunk's output: the shared representation every head reads."""
        return self.trunk(x)

    def forward(self, x: Tensor) -> list[Tensor]:
        """One output per task, in head order; the trunk runs once."""
        shared = self.features(x)
        return [head(shared) for head in self.heads]

    def shared_parameters(self) -> Iterator[nn.Parameter]:
        """The trunk's parameters: those every task's loss reaches."""
        return self.trunk.parameters()

    def task_parameters(self, k: int) -> Iterator[nn.Parameter]:
        """The parameters of task ``k``'s head: only task ``k``'s loss reaches them."""
        require("k", k, Int(min=-self.num_tasks, max=self.num_tasks - 1))
        return self.heads[k].parameters()


@contextlib.contextmanager
def seeded_init(seed: int | None) -> Iterator[None]:
    """Run the block under ``torch.manual_seed(seed)`` without disturbing the global CPU generator.

    With ``seed=None`` the block simply uses (and advances) the global generator, as ``nn.Module``
    construction normally does.

    >>> with seeded_init(0):
    ...     a = nn.Linear(2, 2).weight.clone()
    >>> with seeded_init(0):
    ...     b = nn.Linear(2, 2).weight.clone()
    >>> torch.equal(a, b)
    True
    """
    if seed is None:
        yield
        return
    require("seed", seed, Int())
    # fork_rng restores the global state afterwards, so seeding a model does not change
    # what the caller's later random draws are.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield

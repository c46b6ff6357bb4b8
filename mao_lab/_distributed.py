"""Data-parallel training: every replica takes the same step, the one a single process would take on
the union of the replicas' batches.

``DistributedDataParallel`` averages gradients in hooks that fire when ``loss.backward()`` accumulates
into ``.grad``.  MAO and the other methods compute per-task gradients with ``torch.autograd.grad``,
which never runs those hooks: wrapped or not, every replica would step on its own half-batch and the
replicas would drift apart without an error.  :class:`Replicas` does the averaging instead, for every
gradient a method computes, and for the loss values a method reads:

- the loss values: one ``all_reduce`` of the ``T`` numbers per forward pass.  Each loss is replaced
  by :class:`_AveragedLoss`, whose value is the average (bit-identical on every replica) and whose
  gradient flows to the local loss.  For any scalar ``F(L_1..L_T)`` a method builds,
  ``grad F = sum_k dF/dL_k grad L_k``: with the values averaged and every gradient averaged, the step
  is the union-batch step whenever the replicas' batches are equal-sized and the losses are means.
- the gradients: flattened into buckets (one collective per bucket, not per tensor), reduced
  asynchronously so that a task's reduction overlaps the next task's backward pass.

Random draws need nothing: every method draws from its own generator, seeded alike on every replica.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

__all__ = ["DistributedSetting", "Replicas", "refuse_sharded_parameters"]

BUCKET_BYTES = 25 * 1024 * 1024
"""The size of a reduction bucket, as ``DistributedDataParallel``'s default ``bucket_cap_mb``."""


def _ddp_class() -> type | None:
    if not torch.distributed.is_available():
        return None
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel


def refuse_sharded_parameters(params: Sequence[Tensor], owner: str) -> None:
    """Raise ``TypeError`` for parameters sharded across processes (FSDP's flat parameters, DTensors).

    Per-task gradients of a shard are not the task's gradient: a method stepping shards would be
    silently wrong, so it refuses them.
    """
    dtensor: Any = None
    if torch.distributed.is_available():
        try:
            from torch.distributed.tensor import DTensor as dtensor
        except ImportError:  # pragma: no cover - older torch
            dtensor = None
    for i, p in enumerate(params):
        if getattr(p, "_is_flat_param", False) or (dtensor is not None and isinstance(p, dtensor)):
            raise TypeError(
                f"{owner}: parameter {i} is sharded across processes ({type(p).__name__}: FSDP or DTensor); "
                "per-task gradients need whole parameters on every process: wrap the model in "
                "DistributedDataParallel instead, or pass plain (replicated) parameters"
            )


class DistributedSetting:
    """What a method or MAO was told about data parallelism: the constructor keyword ``distributed``.

    ``None`` (default): average over the default process group whenever ``torch.distributed`` is
    initialised with more than one process; ``False``: never (each process steps on its own batch);
    a ``ProcessGroup``: average over that group; a ``DistributedDataParallel`` module: average over its
    group, and refuse to step inside its ``no_sync()`` (gradient accumulation is not supported).

    Copying a method shares the group; a group or module cannot be pickled (a process group belongs
    to the running processes): pickling one raises.
    """

    __slots__ = ("value",)

    def __init__(self, value: Any = None) -> None:
        ddp = _ddp_class()
        ok = value is None or value is False or value is True or (ddp is not None and isinstance(value, ddp))
        if not ok and torch.distributed.is_available():
            ok = isinstance(value, torch.distributed.ProcessGroup)
        if not ok:
            raise TypeError(
                "distributed must be None (automatic), False (off), True (the default group), a "
                f"torch.distributed ProcessGroup or a DistributedDataParallel module, got {type(value).__name__}"
            )
        self.value = value

    def __deepcopy__(self, memo: dict[int, Any]) -> DistributedSetting:
        return self  # the process group (or the wrapped model) is shared, never copied

    def __reduce__(self) -> tuple[Any, ...]:
        if self.value is None or isinstance(self.value, bool):
            return (DistributedSetting, (self.value,))
        raise TypeError(
            "a method or optimizer made with distributed=<process group or DDP module> cannot be pickled "
            "(the group belongs to the running processes); save its state_dict() instead"
        )

    def resolve(self, params: Sequence[Tensor], owner: str) -> Replicas | None:
        """The replicas to average over at this step, or ``None`` to step alone."""
        value = self.value
        if value is False:
            return None
        if value is not None and value is not True:
            refuse_sharded_parameters(params, owner)
        if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
            if value is None:
                return None
            raise RuntimeError(
                f"{owner}: distributed={value!r} but torch.distributed is not initialised "
                "(call torch.distributed.init_process_group first)"
            )
        ddp = _ddp_class()
        group = None
        if ddp is not None and isinstance(value, ddp):
            if not value.require_backward_grad_sync:
                raise RuntimeError(
                    f"{owner}: stepped inside DistributedDataParallel.no_sync(): accumulating gradients "
                    "without synchronisation is not supported (the per-task gradients are averaged at "
                    "every step); step outside no_sync()"
                )
            group = value.process_group
        elif value is not None and value is not True:
            group = value
        world = torch.distributed.get_world_size(group)
        if world == 1:
            return None
        refuse_sharded_parameters(params, owner)
        return Replicas(group, world)


@dataclass
class Replicas:
    """The processes that average their losses and gradients: a process group and its size.

    Attributes:
        group: the process group (``None``: the default group).
        world_size: the number of processes.
        bytes_reduced: bytes sent to ``all_reduce`` so far (the payload, for the benchmark).
        collectives: ``all_reduce`` calls so far.
    """

    group: Any
    world_size: int
    bytes_reduced: int = 0
    collectives: int = 0

    def _all_reduce(self, flat: Tensor, async_op: bool) -> Any:
        self.bytes_reduced += flat.numel() * flat.element_size()
        self.collectives += 1
        return torch.distributed.all_reduce(flat, group=self.group, async_op=async_op)

    def average_values(self, values: Tensor) -> Tensor:
        """The average over the replicas of ``values`` (one ``all_reduce``), in float64, identical everywhere."""
        total = values.detach().to(torch.float64).clone()
        self._all_reduce(total, async_op=False)
        return total / self.world_size

    def average_losses(self, losses: Sequence[Tensor]) -> list[Tensor]:
        """The losses with their values averaged over the replicas and their gradients local (see module doc)."""
        averaged = self.average_values(torch.stack([loss.detach().reshape(()).to(torch.float64) for loss in losses]))
        return [
            _AveragedLoss.apply(loss, averaged[k].to(loss.dtype).reshape(loss.shape)) for k, loss in enumerate(losses)
        ]

    def launch(self, grads: Sequence[Tensor | None]) -> PendingAverage:
        """Start averaging ``grads`` (bucketed, asynchronous); :meth:`PendingAverage.wait` returns them."""
        pending = PendingAverage(self, list(grads))
        buckets: dict[tuple[torch.dtype, torch.device], list[int]] = {}
        sizes: dict[tuple[torch.dtype, torch.device], int] = {}
        for i, g in enumerate(grads):
            if g is None or g.numel() == 0:
                continue
            key = (g.dtype, g.device)
            nbytes = g.numel() * g.element_size()
            if key in buckets and sizes[key] + nbytes > BUCKET_BYTES:
                pending.start(buckets.pop(key))
                sizes[key] = 0
            buckets.setdefault(key, []).append(i)
            sizes[key] = sizes.get(key, 0) + nbytes
        for members in buckets.values():
            pending.start(members)
        return pending

    def average(self, grads: Sequence[Tensor | None]) -> list[Tensor | None]:
        """``grads`` averaged over the replicas (bucketed)."""
        return self.launch(grads).wait()


@dataclass
class PendingAverage:
    """Gradients whose bucketed reduction is under way."""

    replicas: Replicas
    grads: list[Tensor | None]
    _buckets: list[tuple[list[int], Tensor, Any]] = field(default_factory=list)
    #: After :meth:`wait`, one sum per bucket of the averaged values: NaN or Inf if any of them is
    #: (what :meth:`~mao_lab.TaskGradients.check_finite` reads instead of another pass over them).
    probes: list[Tensor] = field(default_factory=list)

    def start(self, members: list[int]) -> None:
        tensors = [self.grads[i] for i in members]
        flat = torch.cat([t.reshape(-1) for t in tensors if t is not None])
        self._buckets.append((members, flat, self.replicas._all_reduce(flat, async_op=True)))

    def wait(self) -> list[Tensor | None]:
        """The averaged gradients: views into the reduced buckets, shaped as the originals."""
        out = list(self.grads)
        for members, flat, work in self._buckets:
            work.wait()
            flat.div_(self.replicas.world_size)
            self.probes.append(flat.sum())
            sizes = [out[i].numel() for i in members]  # type: ignore[union-attr]
            for i, piece in zip(members, flat.split(sizes)):
                out[i] = piece.view_as(self.grads[i])  # type: ignore[arg-type]
        self._buckets = []
        return out


class _AveragedLoss(torch.autograd.Function):
    """Forward: the averaged value, exactly (so that every replica reads the same number).  Backward:
    the gradient goes to the local loss (whose gradients the replicas then average).

    ``local + (averaged - local).detach()`` would round differently on every replica.
    """

    @staticmethod
    def forward(ctx: Any, local: Tensor, averaged: Tensor) -> Tensor:
        return averaged.clone()

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None]:
        return grad, None

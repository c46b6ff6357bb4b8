"""Helpers shared by the test files: the multi-task network, an exact state comparison and a snapshot that
checks nothing changed, a checkpoint round trip, and a notebook writer.

Imported as ``from _helpers import ...``: ``pythonpath = ["tests"]`` in pyproject.toml puts this folder on the
path, and ``tests/_distributed_worker.py``, run as a script, finds it beside itself."""

from __future__ import annotations

import copy
import dataclasses
import io
import math
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from torch import Tensor, nn

__all__ = ["Net", "Unchanged", "assert_same", "saved", "unchanged", "write_notebook"]


class Net(nn.Module):
    """A shared trunk and one linear head per task: the network most tests train.

    ``widths`` are the trunk's widths, input first: ``(5, 8, 6)`` is ``Linear(5, 8), Tanh, Linear(8, 6), Tanh``,
    and each head is ``Linear(6, 1)``.  The layers are drawn in that order after ``torch.manual_seed(seed)``,
    so a net is the same whatever ran before.  The global RNG is restored afterwards (the methods are checked
    not to touch it) unless ``seed_globally``: files whose later draws (PCGrad's, say) start from that seed.

    >>> net = Net(2, widths=(3, 4), dtype=torch.float32, activation=nn.ReLU)
    >>> [type(module).__name__ for module in net.trunk], len(net.heads)
    (['Linear', 'ReLU'], 2)
    >>> [tuple(p.shape) for p in net(torch.ones(7, 3))]
    [(7,), (7,)]
    """

    def __init__(
        self,
        num_tasks: int = 3,
        seed: int = 0,
        dtype: torch.dtype = torch.float64,
        *,
        widths: Sequence[int] = (5, 8, 6),
        activation: type[nn.Module] = nn.Tanh,
        seed_globally: bool = False,
    ) -> None:
        super().__init__()
        with torch.random.fork_rng(devices=[], enabled=not seed_globally):
            torch.manual_seed(seed)
            layers = [(nn.Linear(n_in, n_out), activation()) for n_in, n_out in zip(widths, widths[1:])]
            self.trunk = nn.Sequential(*(module for layer in layers for module in layer))
            self.heads = nn.ModuleList(nn.Linear(widths[-1], 1) for _ in range(num_tasks))
        self.to(dtype)

    def forward(self, x: Tensor) -> list[Tensor]:
        """Each head's prediction, shape ``(batch,)``."""
        z = self.trunk(x)
        return [head(z).squeeze(-1) for head in self.heads]

    def losses(self, x: Tensor, y: Tensor, scales: Sequence[float] | None = None) -> list[Tensor]:
        """Each task's mean squared error against its column of ``y``, times its scale where ``scales`` is given."""
        errors = [((prediction - y[:, k]) ** 2).mean() for k, prediction in enumerate(self(x))]
        return errors if scales is None else [s * error for s, error in zip(scales, errors)]


def assert_same(a: Any, b: Any, where: str = "state", *, ordered: bool = False) -> None:
    """Exact recursive equality of two states: tensors by dtype, shape, device and every byte (NaNs where NaNs
    were), dicts by keys (in the same order too if ``ordered``), then every leaf; ``where`` names the leaf that
    differs.

    >>> assert_same({"step": 1, "v": torch.tensor([0.0, math.nan])}, {"step": 1, "v": torch.tensor([0.0, math.nan])})
    >>> assert_same({"v": torch.tensor([0.0])}, {"v": torch.tensor([-0.0])})  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    AssertionError: state/v...
    """
    if isinstance(a, Tensor) or isinstance(b, Tensor):
        assert isinstance(a, Tensor) and isinstance(b, Tensor), where
        assert (a.dtype, a.shape, a.device) == (b.dtype, b.shape, b.device), where
        if a.dtype != torch.bool:
            a, b = (t.detach().reshape(-1).contiguous().view(torch.uint8) for t in (a, b))
        assert torch.equal(a, b), where
    elif isinstance(a, dict):
        assert isinstance(b, dict), where
        keys_a, keys_b = (list(a), list(b)) if ordered else (sorted(a, key=str), sorted(b, key=str))
        assert keys_a == keys_b, f"{where}: keys {keys_a} vs {keys_b}"
        for key in a:
            assert_same(a[key], b[key], f"{where}/{key}", ordered=ordered)
    elif isinstance(a, (list, tuple)):
        assert isinstance(b, (list, tuple)) and len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same(x, y, f"{where}[{i}]", ordered=ordered)
    elif isinstance(a, float) and math.isnan(a):
        assert isinstance(b, float) and math.isnan(b), where
    else:
        assert a == b, f"{where}: {a!r} != {b!r}"


class Unchanged:
    """A snapshot of parameters and a state; ``check()`` asserts both are byte for byte as they were."""

    def __init__(self, params: Iterable[Tensor], state_of: Callable[[], dict[str, Any]]) -> None:
        self.params, self.state_of = list(params), state_of
        self.before = [p.detach().clone() for p in self.params]
        self.state = copy.deepcopy(state_of())

    def check(self) -> None:
        for i, (p, q) in enumerate(zip(self.params, self.before)):
            assert_same(p.detach(), q, f"parameter {i}")
        assert_same(self.state_of(), self.state)


def unchanged(net: nn.Module, optimizer: Any) -> Unchanged:
    """An :class:`Unchanged` of ``net``'s parameters and ``optimizer.state_dict()`` (a method, MAO, torch's)."""
    return Unchanged(net.parameters(), optimizer.state_dict)


def saved(state: dict[str, Any]) -> dict[str, Any]:
    """``state`` after a round trip through ``torch.save`` / ``torch.load(weights_only=True)``: a checkpoint."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


def write_notebook(folder: Path, name: str = "tiny", *, parameters: str, body: str) -> Path:
    """Write ``folder/name.ipynb``: a ``parameters`` cell (tagged for papermill) then ``body``, on ``python3``."""
    import nbformat  # here: the distributed test's worker processes import this module too
    from nbformat.v4 import new_code_cell, new_notebook

    cells = [new_code_cell(parameters, metadata={"tags": ["parameters"]}), new_code_cell(body)]
    kernelspec = {"name": "python3", "display_name": "Python 3", "language": "python"}
    path = folder / f"{name}.ipynb"
    nbformat.write(new_notebook(cells=cells, metadata={"kernelspec": kernelspec}), path)
    return path


@dataclasses.dataclass(frozen=True)
class SmokeStudy:
    """``python -m mao_lab.study --smoke`` run into ``folder``, run again there (a resume), then ``--ledger-only``
    into ``docs``: the exit codes, and what the first and the second run left, read right after each."""

    folder: Path
    docs: Path
    exits: tuple[int, int, int]  # the first run, the resume, --ledger-only
    files: frozenset[str]  # the first run's files
    ledger: pd.DataFrame  # ledger.csv after the first run
    ledger_md: str  # ledger.md after the first run
    document: dict[str, Any]  # ledger.json after the first run
    executed: tuple[list[str], list[str]]  # the point notebooks after the first run and after the resume
    resumed_ledger: pd.DataFrame
    resumed_ledger_md: str
    resumed_phases: dict[str, Any]  # provenance.json's phases after the resume

"""PyTorch Lightning: a method is the optimizer of a LightningModule with manual optimisation.

The recipe of the README (``automatic_optimization = False``; ``configure_optimizers`` returns the method
and a scheduler; ``training_step`` calls ``self.optimizers().step(closure=...)``) trains exactly as the
plain loop does: the same parameters, bit for bit, after the same steps.  For MAO the recipe uses
``make("mao", ...)``: ``MAO.step`` takes the losses, not Lightning's ``closure=``, and stepping the raw
optimizer (``self.optimizers(use_pl_optimizer=False)``) would not advance Lightning's step count.
"""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn
from torch.optim.lr_scheduler import StepLR
from torch.utils.data import DataLoader, TensorDataset

from mao_lab.methods import make

pl = pytest.importorskip("pytorch_lightning")

pytestmark = pytest.mark.usefixtures("one_thread")

STEPS = 3


class TwoTasks(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.trunk, self.head_a, self.head_b = nn.Linear(3, 4), nn.Linear(4, 1), nn.Linear(4, 1)

    def losses(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        z = self.trunk(x).relu()
        return {"a": (self.head_a(z) - 1).pow(2).mean(), "b": 100 * (self.head_b(z) + 1).abs().mean()}


def data() -> torch.Tensor:
    return torch.randn(8 * STEPS, 3, generator=torch.Generator().manual_seed(1))


class MultiTask(pl.LightningModule):
    """The README's recipe."""

    def __init__(self, method: str) -> None:
        super().__init__()
        self.automatic_optimization = False  # the method computes the per-task gradients itself
        self.net = TwoTasks()
        self.method = method

    def configure_optimizers(self):  # noqa: ANN201 - Lightning's own union of return types
        method = make(self.method, self.parameters(), lr=1e-2)
        return {"optimizer": method, "lr_scheduler": StepLR(method, step_size=1, gamma=0.5)}

    def training_step(self, batch: list[torch.Tensor], batch_idx: int) -> None:
        (x,) = batch
        self.optimizers().step(closure=lambda: self.net.losses(x))
        self.lr_schedulers().step()


def fit(method: str) -> MultiTask:
    torch.manual_seed(0)
    module = MultiTask(method)
    trainer = pl.Trainer(
        max_steps=STEPS,
        max_epochs=1,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*does not have many workers.*")
        warnings.filterwarnings("ignore", message=".*GPU available but not used.*")
        trainer.fit(module, DataLoader(TensorDataset(data()), batch_size=8, shuffle=False))
    return module


def plain_loop(method: str) -> TwoTasks:
    torch.manual_seed(0)
    net = TwoTasks()
    method = make(method, net.parameters(), lr=1e-2)
    scheduler = StepLR(method, step_size=1, gamma=0.5)
    for x in data().split(8):
        method.step(lambda x=x: net.losses(x))
        scheduler.step()
    return net


@pytest.mark.parametrize("method", ["mao", "pcgrad", "io", "uw"])
def test_a_lightning_module_trains_as_the_plain_loop(method: str) -> None:
    module = fit(method)
    reference = plain_loop(method)
    for p, q in zip(module.net.parameters(), reference.parameters()):
        assert torch.equal(p, q)
    optimizer = module.trainer.optimizers[0]
    assert optimizer.steps_taken == module.trainer.global_step == STEPS
    assert optimizer.hparams["lr"] == pytest.approx(1e-2 / 2**STEPS)

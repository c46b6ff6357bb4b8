"""Every touch of TorchJD's internals, in one place, for the one TorchJD version it was written against.

The methods run TorchJD's own scalarizers and aggregators through their public interface.  One thing
TorchJD keeps private is needed too: the state of DWA, FAMO, GradVac and Nash-MTL between steps (to
save it in ``state_dict`` and to roll a failed step back).  It is read and written here only, and
only these four methods depend on TorchJD's version: building one of them under another version
raises a clear error (:func:`require_private_state_support`) instead of a state that saves or resumes
wrongly.  Every other method runs on any TorchJD with the same public interface.

>>> check_torchjd_version("0.18.0", "dwa")
>>> check_torchjd_version("0.19.1", "dwa")
Traceback (most recent call last):
...
ImportError: method 'dwa' saves and restores internals of torchjd 0.18 (the state of DWA, FAMO, GradVac and Nash-MTL), found torchjd 0.19.1: install the pinned version, pip install 'torchjd==0.18.0' (requirements.txt), or use a method that keeps no TorchJD state
"""  # noqa: E501 - a doctest's expected exception message is one line

from __future__ import annotations

from collections.abc import Callable, Mapping
from importlib.metadata import version as installed_version
from typing import Any, TypeVar

import numpy as np
import torch
from torch import Tensor
from torchjd import aggregation, scalarization

__all__ = [
    "SUPPORTED_TORCHJD",
    "check_torchjd_version",
    "dwa_state",
    "famo_dtype",
    "famo_state",
    "gradvac_phi",
    "load_dwa_state",
    "load_famo_state",
    "load_balancer",
    "load_gradvac_phi",
    "load_nash_mtl_state",
    "nash_mtl_state",
    "require_private_state_support",
    "save_balancer",
]

_Balancer = TypeVar("_Balancer")

SUPPORTED_TORCHJD = "0.18"
"""The TorchJD release series whose internals this module reads (``requirements.txt`` pins 0.18.0)."""


def check_torchjd_version(found: str, method: str) -> None:
    """Raise ``ImportError`` unless ``found`` is a TorchJD version of the supported series."""
    if found.split("+")[0].split(".")[:2] != SUPPORTED_TORCHJD.split("."):
        raise ImportError(
            f"method {method!r} saves and restores internals of torchjd {SUPPORTED_TORCHJD} (the state of DWA, "
            f"FAMO, GradVac and Nash-MTL), found torchjd {found}: install the pinned version, pip install "
            f"'torchjd=={SUPPORTED_TORCHJD}.0' (requirements.txt), or use a method that keeps no TorchJD state"
        )


def require_private_state_support(method: str) -> None:
    """Called when DWA, FAMO, GradVac or Nash-MTL is built: refuse a TorchJD whose internals may differ."""
    check_torchjd_version(installed_version("torchjd"), method)


def save_balancer(
    state: dict[str, Any], balancer: object, kind: type[_Balancer], save: Callable[[_Balancer], dict[str, Any]]
) -> dict[str, Any]:
    """A method's own ``state`` with its TorchJD ``balancer``'s state, ``save(balancer)``, under ``"balancer"``
    once the balancer is built (a ``kind``); before its first step a method has none to save."""
    if isinstance(balancer, kind):
        state["balancer"] = save(balancer)
    return state


def load_balancer(
    state: Mapping[str, Any], balancer: object, kind: type[_Balancer], load: Callable[[_Balancer, Any], None]
) -> None:
    """Load a saved ``state["balancer"]`` (:func:`save_balancer`) into ``balancer``: the fresh ``kind`` that
    loading the method's state has built."""
    if "balancer" in state:
        assert isinstance(balancer, kind)
        load(balancer, state["balancer"])


# -- DWA: the running loss sums of the current epoch and the averages of the last two ----------------


def dwa_state(dwa: scalarization.DWA) -> dict[str, Any]:
    return {"loss_sum": dwa._loss_sum, "n_batches": dwa._n_batches, "previous_averages": list(dwa._previous_averages)}


def load_dwa_state(dwa: scalarization.DWA, state: dict[str, Any]) -> None:
    dwa._loss_sum = None if state["loss_sum"] is None else state["loss_sum"].clone()
    dwa._n_batches = int(state["n_batches"])
    dwa._previous_averages = [a.clone() for a in state["previous_averages"]]


# -- FAMO: the logits (a module parameter), their Adam, and the losses before the step ----------------


def famo_state(famo: scalarization.FAMO) -> dict[str, Any]:
    return {
        "scalarizer": famo.state_dict(),
        "optimizer": None if famo._optimizer is None else famo._optimizer.state_dict(),
        "prev_losses": famo._prev_losses,
    }


def load_famo_state(famo: scalarization.FAMO, state: dict[str, Any]) -> None:
    famo.load_state_dict(state["scalarizer"])
    if state["optimizer"] is None:
        famo._optimizer = None
    else:
        famo._optimizer = torch.optim.Adam([famo._w], lr=famo.lr, weight_decay=famo.weight_decay)
        famo._optimizer.load_state_dict(state["optimizer"])
    famo._prev_losses = None if state["prev_losses"] is None else state["prev_losses"].clone()


def famo_dtype(famo: scalarization.FAMO) -> torch.dtype:
    """The dtype of FAMO's logits, which ``FAMO.update`` needs the losses in."""
    return famo._w.dtype


# -- GradVac: the EMA of target cosine similarities -----------------------------------------------------


def gradvac_phi(gradvac: aggregation.GradVac) -> Tensor | None:
    return gradvac.gramian_weighting._phi_t


def load_gradvac_phi(gradvac: aggregation.GradVac, phi: Tensor | None) -> None:
    weighting = gradvac.gramian_weighting
    if phi is None:
        weighting.reset()
    else:
        weighting._phi_t = phi.clone()
        weighting._state_key = (phi.shape[0], phi.dtype)


# -- Nash-MTL: the step count, the last weights and the normalisation of its solver --------------------


def nash_mtl_state(nash: aggregation.NashMTL) -> dict[str, Any]:
    weighting = nash.weighting
    return {
        "step": float(weighting.step),
        "prvs_alpha": torch.from_numpy(np.array(weighting.prvs_alpha, copy=True)),
        "normalization_factor": torch.from_numpy(np.array(weighting.normalization_factor, copy=True)),
    }


def load_nash_mtl_state(nash: aggregation.NashMTL, state: dict[str, Any]) -> None:
    weighting = nash.weighting
    weighting.reset()
    weighting.step = float(state["step"])
    weighting.prvs_alpha = state["prvs_alpha"].numpy().copy()
    weighting.normalization_factor = state["normalization_factor"].numpy().copy()
    if weighting.step > 0:  # the solver's problem is built at step 0; build it for the resumed run
        weighting._init_optim_problem()

"""GLS, the geometric loss strategy (Chennupati et al., CVPR Workshops 2019; ``docs/references.md`` §3).

The model steps on the geometric mean of the task losses, ``S(L) = (prod_k L_k)^(1/T)``, TorchJD's
``torchjd.scalarization.GeometricMean``.  Its weights are ``w_k = dS/dL_k = S / (T L_k)``: a task
whose loss is already small gets a large weight, so no task is left behind in relative terms, and
multiplying one loss by a constant ``c`` multiplies every weight by ``c^(1/T)`` (the direction does
not change).  The losses must be positive (a zero loss makes ``w_k`` undefined: the step is refused).

Written by following ``docs/adding-a-method.md``: this file and a README row are all it took.

>>> import torch
>>> from mao_lab.methods import make
>>> p = torch.ones(2, requires_grad=True)
>>> method = make("gls", [p], lr=0.1, optimizer="sgd")
>>> method.step(lambda: [p.pow(2).sum(), 4 * p.pow(2).sum()])  # S = sqrt(2 * 8) = 4
tensor([2., 8.])
>>> p.detach()  # w = (S / (2 * 2), S / (2 * 8)) = (1, 0.25): the step is 0.1 * (2 + 0.25 * 8) * p
tensor([0.6000, 0.6000])
"""

from __future__ import annotations

from torchjd import scalarization

from ._registry import register
from ._weighted import ScalarizerMethod

__all__ = ["GLSMethod"]


@register("gls", "GLS: Adam on the geometric mean of the task losses (Chennupati et al. 2019)", "torchjd")
class GLSMethod(ScalarizerMethod):
    """One step of the base optimizer on ``(prod_k L_k)^(1/T)``: weights ``w_k = S / (T L_k)``."""

    torchjd_class = scalarization.GeometricMean

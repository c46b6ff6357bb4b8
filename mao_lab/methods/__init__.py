"""Every task-balancing method behind one interface: ``make(name, params, **hyperparameters)``.

See :class:`Method` for the training-step contract, :func:`available` for the list, and
``docs/adding-a-method.md`` for adding one (one file in this folder: it is imported, so registered,
with the package).

Where each algorithm comes from (also :func:`sources`): "torchjd" methods run TorchJD 0.18's own
scalarizer or aggregator (``torchjd.scalarization`` / ``torchjd.aggregation``; every touch of its
internals is in ``_torchjd``), the rest are written here.

=================================================  ===========  ====================================
methods                                            source       module
=================================================  ===========  ====================================
sum, mean, uw, dwa, rlw, famo, imtl_l, gls         torchjd      ``_scalarizations`` (``_weighted``)
gradnorm                                           mao_lab      ``_gradnorm`` (``_weighted``)
mgda, pcgrad, cagrad, imtl_g, nash_mtl,            torchjd      ``_aggregators`` (``_aggregated``)
aligned_mtl, upgrad, graddrop, gradvac
mao                                                mao_lab      ``_mao_method`` (:class:`mao_lab.MAO`)
mtadam                                             mao_lab      ``_mtadam``
sus, ius, io, grouping                             mao_lab      ``_independent``
=================================================  ===========  ====================================

Weightings, aggregators and the independent steps step a base optimizer, ``optimizer="adam"``
(default; AdamW-style decoupled weight decay) or ``"sgd"``.  What a recorded step's
``task_updates`` mean for each family is defined once, in :mod:`mao_lab.methods._contributions`.

>>> sources()["pcgrad"], sources()["gradnorm"]
('torchjd', 'mao_lab')
"""

import importlib as _importlib
import pkgutil as _pkgutil

from ._base import LossClosure, Method
from ._registry import available, hyperparameter_names, make, method_class, register, sources

# Every module of this package is imported, so a method's one file registers it; the shared modules
# come first (sorted order does not matter: a module imports what it builds on).
for _module in sorted(_m.name for _m in _pkgutil.iter_modules(__path__)):
    _importlib.import_module(f"{__name__}.{_module}")

__all__ = [
    "LossClosure",
    "Method",
    "available",
    "hyperparameter_names",
    "make",
    "method_class",
    "register",
    "sources",
]

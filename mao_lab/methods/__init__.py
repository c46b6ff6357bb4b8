"""Every task-balancing method behind one interface: ``make(name, params, **hyperparameters)``.

See :class:`Method` for the training-step contract, :func:`available` for the list, and
``docs/adding-a-method.md`` for adding one (one file in this folder: it is imported, so registered,
with the package).

Where each algorithm comes from is :func:`sources`: "torchjd" methods run TorchJD 0.18's own scalarizer
or aggregator (``torchjd.scalarization`` / ``torchjd.aggregation``; every touch of its internals is in
``_torchjd``), the rest are written here.  The families, each a base class a method's file builds on:

====================  ===================  ==============================================================
family                base class           methods (modules)
====================  ===================  ==============================================================
loss weightings       ``_weighted``        sum, mean, uw, dwa, rlw, famo, imtl_l (``_scalarizations``),
                                           gradnorm (``_gradnorm``), gls (``_gls``)
aggregators           ``_aggregated``      mgda_fw, pcgrad, cagrad, imtl_g, nash_mtl, aligned_mtl, upgrad,
                                           graddrop, gradvac (``_aggregators``), mgda (``_min_norm``)
per-task optimizers   ``OptimizerMethod``  mao (``_mao_method``, :class:`mao_lab.MAO`), mtadam (``_mtadam``)
independent steps     ``_independent``     sus, ius, io, grouping
====================  ===================  ==============================================================

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

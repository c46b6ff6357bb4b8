"""Every task-balancing method behind one interface: ``make(name, params, **hyperparameters)``.

See :class:`Method` for the training-step contract and :func:`available` for the list.

Where each algorithm comes from (also :func:`sources`): "torchjd" methods run TorchJD 0.18's own
scalarizer or aggregator (``torchjd.scalarization`` / ``torchjd.aggregation``), the rest are
written here.

=================================================  ===========  ====================================
methods                                            source       module
=================================================  ===========  ====================================
sum, mean, uw, dwa, rlw, famo, imtl_l              torchjd      ``_scalarizations`` (``_weighted``)
gradnorm                                           mao_lab      ``_gradnorm`` (``_weighted``)
mgda, pcgrad, cagrad, imtl_g, nash_mtl,            torchjd      ``_aggregators`` (``_aggregated``)
aligned_mtl, upgrad, graddrop, gradvac
mao                                                mao_lab      ``_mao_method`` (:class:`mao_lab.MAO`)
mtadam                                             mao_lab      ``_mtadam``
sus, ius, io, grouping                             mao_lab      ``_independent``
=================================================  ===========  ====================================

Weightings and aggregators step a base optimizer, ``optimizer="adam"`` (default; AdamW-style
decoupled weight decay) or ``"sgd"``.  What a recorded step's ``task_updates`` mean for each family
is defined in :mod:`mao_lab.methods._contributions`.

>>> sources()["pcgrad"], sources()["gradnorm"]
('torchjd', 'mao_lab')
"""

from ._base import LossClosure, Method
from ._registry import available, hyperparameter_names, make, register, sources

# Importing the implementations registers them.
from . import _mao_method  # noqa: E402,F401  (registers "mao")
from . import _aggregators, _gradnorm, _independent, _mtadam, _scalarizations  # noqa: E402,F401  (the peers)

__all__ = ["LossClosure", "Method", "available", "hyperparameter_names", "make", "register", "sources"]

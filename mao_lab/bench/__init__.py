"""Benchmarks: ``python -m mao_lab.bench {step,recorder} [--quick] [--device cpu|cuda] [--seed N]``.

Each invocation prints exactly one JSON line on stdout (progress goes to stderr) and, with
``--output FILE``, writes the same JSON to ``FILE``.

- ``step``: MAO's full training step against TorchJD's ``mtl_backward`` + Adam and against the
  physical limit (one forward, one trunk backward per task, one backward per head); MAO's update
  alone against ``T`` Adam updates; the optimizer state's bytes against ``2·T·shared + 2·task-specific``
  parameters.  One entry per configuration under ``"configs"``.  See :func:`run_step_benchmark`.
- ``recorder``: the cost of the instruments (provided by :mod:`mao_lab.bench._recorder_bench`).
"""

from ._step_bench import STEP_CONFIGS, BenchConfig, run_step_benchmark

__all__ = ["BenchConfig", "STEP_CONFIGS", "run_step_benchmark"]

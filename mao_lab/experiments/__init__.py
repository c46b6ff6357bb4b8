"""The experiments the notebooks run, as library functions, so that their claims can be tested."""

from ._landscape import landscape_trajectories, pareto_table

__all__ = ["landscape_trajectories", "pareto_table"]

"""Executors that drive a recipe's stages: ``local`` runs them one after another in this process (the default).

A recipe hands an executor its stages as plain callables (:class:`~rlxf.distributed.base.OnlineStages`), so an
executor imports no recipe, and one that places the stages on other processes or machines (Ray actors for
sampling, feedback and training) drives the same recipes unchanged. Ray is imported only in this package.
"""
from rlxf.distributed.base import OnlineStages, StepResult
from rlxf.distributed.local import LocalExecutor

__all__ = ["LocalExecutor", "OnlineStages", "StepResult"]

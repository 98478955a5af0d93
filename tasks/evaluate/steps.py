"""Prefect tasks of evaluation: thin wrappers over the plain functions."""

from __future__ import annotations

from prefect import task

from tasks.evaluate.run import EvaluationSummary, evaluate
from tasks.settings import ArvidConfig


@task(name="evaluate-generator")
def evaluate_step(config: ArvidConfig) -> EvaluationSummary:
    """Score the generator (resuming a cut-short evaluation) and attach metrics to its version."""
    return evaluate(config)

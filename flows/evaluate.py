"""Flow `arvid-evaluate`: a registered generator -> FVD, frame prediction, bits/token, samples."""

from __future__ import annotations

from prefect import flow

from tasks import storage
from tasks.evaluate.run import EvaluationSummary
from tasks.evaluate.steps import evaluate_step
from tasks.settings import ArvidConfig


@flow(name="arvid-evaluate", validate_parameters=True)
def evaluate_flow(config: ArvidConfig) -> EvaluationSummary:
    """Evaluate evaluate.model (default: the newest generator) and record the metrics on it."""
    storage.configure_storage(config.storage)
    return evaluate_step(config)

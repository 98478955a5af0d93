"""Config of the end-to-end pipeline: which steps it may reuse instead of running."""

from __future__ import annotations

from pydantic import Field

from tasks.config import StrictModel


class PipelineConfig(StrictModel):
    """How `arvid pipeline` chains ingest -> tokenizer -> tokenize -> pretrain -> evaluate -> promote."""

    tokenizer: str | None = Field(
        None,
        description="reuse this registered tokenizer (models:/arvid-tokenizer@champion, /N) "
        "instead of training one; None: train (or reuse the one this config trained before)",
    )
    evaluate: bool = Field(True, description="score the trained generator")
    promote: bool = Field(True, description="promote it if it passes promote.gates")
    run_name: str = Field("pipeline", description="name of the pipeline's parent MLflow run")

"""What a pipeline run did, step by step, and where to look at the result."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel


class StepOutcome(BaseModel):
    """One step of the pipeline: whether it ran or was skipped, its summary line, its time."""

    name: str
    status: Literal["ran", "skipped"]
    line: str
    seconds: float


class PipelineSummary(BaseModel):
    """The whole run: its steps, the generator it produced, its metrics and the promotion."""

    mlflow_run_id: str
    steps: list[StepOutcome]
    dataset: str
    tokenizer: str
    generator: str | None = None  # models:/arvid-generator/<version>
    metrics: dict[str, float] = {}
    promotion: str | None = None  # the decision, e.g. promoted / rejected / already-champion
    champion: str | None = None  # the version `champion` points at afterwards
    samples: list[str] = []  # local paths of the sample videos, when artifacts are local
    contact_sheet: str | None = None
    seconds: float = 0.0

    def line(self) -> str:
        """One line per step, then the result."""
        steps = "; ".join(f"{s.name} {s.status} ({s.seconds:.0f} s)" for s in self.steps)
        result = f"generator {self.generator}" if self.generator else "no generator"
        if self.promotion:
            result += f", {self.promotion} (champion: v{self.champion})"
        return f"pipeline: {steps} -> {result} in {self.seconds:.0f} s (MLflow run {self.mlflow_run_id})"

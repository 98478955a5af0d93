"""Config of promotion: the gates a candidate must pass, which model and version, and the lock."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from tasks.config import StrictModel


class GateConfig(StrictModel):
    """One gate in the style of MLflow's MetricThreshold, over a metric tag `arvid.metric.<metric>`.

    `threshold` is absolute (the candidate must be at least / at most it); the two changes are
    margins over the current champion, in the metric's better direction: 0 means "no worse",
    0.02 relative means "better by at least 2% of the champion's value". The first model (no
    champion yet) is judged on `threshold` alone.
    """

    metric: str = Field(description="metric name, read from the version tag arvid.metric.<name>")
    greater_is_better: bool = Field(description="False for FVD and bits/token: lower is better")
    threshold: float | None = Field(None, description="absolute bound the candidate must meet")
    min_absolute_change: float | None = Field(
        None, ge=0, description="improvement over the champion at least this (0: no worse)"
    )
    min_relative_change: float | None = Field(
        None, ge=0, description="improvement over the champion at least this fraction of it"
    )
    on_missing: Literal["fail", "error"] = Field(
        "fail",
        description="a metric the candidate or champion lacks: 'fail' rejects the candidate "
        "with that reason; 'error' stops the promotion and changes nothing",
    )

    @model_validator(mode="after")
    def _has_a_condition(self) -> GateConfig:
        if self.threshold is None and self.min_absolute_change is None:
            if self.min_relative_change is None:
                raise ValueError(
                    f"gate {self.metric!r} checks nothing: set threshold, min_absolute_change "
                    "or min_relative_change"
                )
        return self

    def describe(self) -> str:
        """The gate in words, e.g. 'fvd lower by >= 2% than the champion'."""
        word = "higher" if self.greater_is_better else "lower"
        parts = []
        if self.threshold is not None:
            parts.append(f"{'>=' if self.greater_is_better else '<='} {self.threshold:g}")
        if self.min_absolute_change is not None:
            parts.append(
                "no worse than the champion"
                if self.min_absolute_change == 0
                else f"{word} by >= {self.min_absolute_change:g} than the champion"
            )
        if self.min_relative_change is not None:
            parts.append(
                "no worse than the champion"
                if self.min_relative_change == 0
                else f"{word} by >= {self.min_relative_change:.2%} than the champion"
            )
        return f"{self.metric} " + " and ".join(parts)


class LockConfig(StrictModel):
    """Where the promotion lock lives, how long to wait for it, and when a held one is stale."""

    root: str | None = Field(
        None,
        description="folder or s3:// prefix every promoting machine shares; None: beside the "
        "sqlite tracking database (a tracking server needs an explicit s3:// root)",
    )
    timeout_s: float = Field(60.0, gt=0, description="give up waiting for the lock after this")
    stale_after_s: float = Field(
        300.0,
        gt=0,
        description="an s3:// lock older than this is taken over (its holder is presumed dead); "
        "local locks die with their process",
    )


def _default_gates() -> list[GateConfig]:
    return [
        GateConfig(metric="fvd", greater_is_better=False, min_relative_change=0.02),
        GateConfig(metric="val_bits_per_token", greater_is_better=False, min_absolute_change=0.0),
    ]


class PromoteConfig(StrictModel):
    """Which registered model and version to judge, the gates, and the lock around the decision."""

    model_name: str = Field(
        "arvid-generator",  # tasks.registry.GENERATOR_MODEL; not imported: settings stay light
        description="registered model whose aliases move",
    )
    candidate: str | None = Field(
        None,
        description="models:/<model_name>/<N> or models:/<model_name>@<alias>; None: the newest "
        "registered version",
    )
    gates: list[GateConfig] = Field(default_factory=_default_gates)
    lock: LockConfig = Field(default_factory=LockConfig)

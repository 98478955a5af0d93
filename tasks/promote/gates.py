"""Judging a candidate: each gate against the candidate's metrics and the champion's (pure logic)."""

from __future__ import annotations

import math

from pydantic import BaseModel

from tasks.promote.config import GateConfig
from tasks.promote.metrics import metric_tag


class MissingMetricError(ValueError):
    """A gate's metric is missing and the gate says to stop (`on_missing: error`)."""


class GateOutcome(BaseModel):
    """One gate's verdict with the values it compared; `reasons` say why it failed."""

    gate: GateConfig
    candidate_value: float | None
    champion_value: float | None
    passed: bool
    reasons: list[str]

    def line(self) -> str:
        """`fvd 41.2 vs champion 45 (-8.44%): pass`-style text."""
        value = "missing" if self.candidate_value is None else f"{self.candidate_value:.6g}"
        against = ""
        if self.champion_value is not None and self.candidate_value is not None:
            change = _relative_change(self.candidate_value, self.champion_value)
            shown = f"{change:+.2%}" if math.isfinite(change) else "n/a"
            against = f" vs champion {self.champion_value:.6g} ({shown})"
        verdict = "pass" if self.passed else "FAIL: " + "; ".join(self.reasons)
        return f"{self.gate.metric} {value}{against}: {verdict}"


def _relative_change(candidate: float, champion: float) -> float:
    if champion == 0:
        return 0.0 if candidate == 0 else math.copysign(math.inf, candidate)
    return (candidate - champion) / abs(champion)


def _improvement(gate: GateConfig, candidate: float, champion: float) -> float:
    """How much better the candidate is, in the metric's own direction (negative: worse)."""
    return candidate - champion if gate.greater_is_better else champion - candidate


def evaluate_gate(
    gate: GateConfig,
    candidate: dict[str, float],
    champion: dict[str, float] | None,
    candidate_label: str,
    champion_label: str | None,
) -> GateOutcome:
    """Judge one gate; `champion` None means there is no champion yet (absolute threshold only)."""
    value = candidate.get(gate.metric)
    base = champion.get(gate.metric) if champion is not None else None
    compares = gate.min_absolute_change is not None or gate.min_relative_change is not None
    missing = []
    if value is None:
        missing.append(
            f"{candidate_label} has no {metric_tag(gate.metric)} tag — evaluate it first"
        )
    if champion is not None and compares and base is None:
        missing.append(
            f"champion {champion_label} has no {metric_tag(gate.metric)} tag to compare "
            "against — evaluate the champion, or drop the margin from this gate"
        )
    if missing:
        if gate.on_missing == "error":
            raise MissingMetricError(
                f"gate {gate.metric!r}: " + "; ".join(missing) + " (or set on_missing: fail)"
            )
        return GateOutcome(
            gate=gate, candidate_value=value, champion_value=base, passed=False, reasons=missing
        )
    assert value is not None
    reasons = []
    if gate.threshold is not None:
        ok = value >= gate.threshold if gate.greater_is_better else value <= gate.threshold
        if not ok:
            bound = "at least" if gate.greater_is_better else "at most"
            reasons.append(f"{value:.6g} is not {bound} the threshold {gate.threshold:g}")
    if base is not None and compares:
        gained = _improvement(gate, value, base)
        word = "higher" if gate.greater_is_better else "lower"
        if gate.min_absolute_change is not None and gained < gate.min_absolute_change:
            reasons.append(
                f"{value:.6g} vs champion {base:.6g}: needs {word} by >= "
                f"{gate.min_absolute_change:g}, is {word} by {gained:.6g}"
            )
        if gate.min_relative_change is not None:
            relative = gained / abs(base) if base != 0 else math.copysign(math.inf, gained)
            if base == 0 and gained == 0:
                relative = 0.0
            if relative < gate.min_relative_change:
                reasons.append(
                    f"{value:.6g} vs champion {base:.6g}: needs {word} by >= "
                    f"{gate.min_relative_change:.2%}, is {word} by {relative:.2%}"
                )
    return GateOutcome(
        gate=gate, candidate_value=value, champion_value=base, passed=not reasons, reasons=reasons
    )


def evaluate_gates(
    gates: list[GateConfig],
    candidate: dict[str, float],
    champion: dict[str, float] | None,
    candidate_label: str,
    champion_label: str | None,
) -> list[GateOutcome]:
    """Judge every gate (all of them, so a rejection lists every reason)."""
    return [
        evaluate_gate(gate, candidate, champion, candidate_label, champion_label) for gate in gates
    ]

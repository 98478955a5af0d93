"""Gate arithmetic: thresholds, absolute and relative margins, both directions, missing values."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from tasks.promote.config import GateConfig, PromoteConfig
from tasks.promote.gates import MissingMetricError, evaluate_gate


def _judge(gate: GateConfig, candidate: float | None, champion: float | None, first=False):
    return evaluate_gate(
        gate,
        {} if candidate is None else {gate.metric: candidate},
        None if first else ({} if champion is None else {gate.metric: champion}),
        "arvid-generator v2",
        None if first else "v1",
    )


@pytest.mark.parametrize(
    ("gate", "candidate", "champion", "passed"),
    [
        # lower is better, 2% relative margin (FVD)
        (dict(greater_is_better=False, min_relative_change=0.02), 49.0, 50.0, True),
        (dict(greater_is_better=False, min_relative_change=0.02), 49.5, 50.0, False),
        # higher is better, 2% relative margin
        (dict(greater_is_better=True, min_relative_change=0.02), 51.0, 50.0, True),
        (dict(greater_is_better=True, min_relative_change=0.02), 49.0, 50.0, False),
        # "no worse": equal passes, worse fails
        (dict(greater_is_better=False, min_absolute_change=0.0), 3.0, 3.0, True),
        (dict(greater_is_better=False, min_absolute_change=0.0), 3.01, 3.0, False),
        (dict(greater_is_better=True, min_absolute_change=0.5), 10.5, 10.0, True),
        (dict(greater_is_better=True, min_absolute_change=0.5), 10.4, 10.0, False),
        # a champion at zero: any improvement is infinitely relative, none is not
        (dict(greater_is_better=True, min_relative_change=0.1), 0.5, 0.0, True),
        (dict(greater_is_better=True, min_relative_change=0.0), 0.0, 0.0, True),
        (dict(greater_is_better=True, min_relative_change=0.1), -0.5, 0.0, False),
        # thresholds bound the value itself
        (dict(greater_is_better=False, threshold=100), 100.0, 1.0, True),
        (dict(greater_is_better=True, threshold=0.9), 0.89, 1.0, False),
    ],
)
def test_a_gate_compares_in_the_metrics_better_direction(
    gate: dict, candidate: float, champion: float, passed: bool
) -> None:
    outcome = _judge(GateConfig(metric="m", **gate), candidate, champion)
    assert outcome.passed is passed
    assert bool(outcome.reasons) is not passed


def test_without_a_champion_only_the_threshold_counts() -> None:
    gate = GateConfig(metric="fvd", greater_is_better=False, threshold=100, min_relative_change=0.5)
    assert _judge(gate, 99.0, None, first=True).passed
    failed = _judge(gate, 101.0, None, first=True)
    assert failed.reasons == ["101 is not at most the threshold 100"]
    assert failed.line() == "fvd 101: FAIL: 101 is not at most the threshold 100"


def test_a_missing_metric_fails_with_the_remedy_or_raises_when_the_gate_says_so() -> None:
    gate = GateConfig(metric="fvd", greater_is_better=False, min_relative_change=0.02)
    missing = _judge(gate, None, 50.0)
    assert not missing.passed
    assert missing.reasons == ["arvid-generator v2 has no arvid.metric.fvd tag — evaluate it first"]
    no_base = _judge(gate, 40.0, None)
    assert "champion v1 has no arvid.metric.fvd tag to compare against" in no_base.reasons[0]
    strict = gate.model_copy(update={"on_missing": "error"})
    with pytest.raises(MissingMetricError, match="gate 'fvd': arvid-generator v2 has no"):
        _judge(strict, None, 50.0)


def test_a_gate_that_checks_nothing_is_a_config_error() -> None:
    with pytest.raises(ValidationError, match="gate 'fvd' checks nothing"):
        GateConfig(metric="fvd", greater_is_better=False)
    with pytest.raises(ValidationError):
        GateConfig(metric="fvd", greater_is_better=False, min_relative_change=-0.1)


def test_the_default_gates_are_fvd_two_percent_lower_and_bits_per_token_no_worse() -> None:
    assert [gate.describe() for gate in PromoteConfig().gates] == [
        "fvd lower by >= 2.00% than the champion",
        "val_bits_per_token no worse than the champion",
    ]


def test_the_demo_config_promotes_with_the_default_gates_and_lock() -> None:
    from tasks.config import load_config
    from tasks.settings import ArvidConfig

    assert load_config(ArvidConfig).promote == PromoteConfig()

"""Ray settings: what a job forwards to its workers never includes a credential."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from tasks.ray_runtime import RayConfig, is_credential, worker_env


def test_the_default_forwards_endpoints_and_no_credential(monkeypatch) -> None:
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-for-workers")
    monkeypatch.setenv("ARVID_S3_ENDPOINT_URL", "http://127.0.0.1:9000")
    forwarded = worker_env(RayConfig())
    assert forwarded["ARVID_S3_ENDPOINT_URL"] == "http://127.0.0.1:9000"
    assert "not-for-workers" not in forwarded.values()
    assert not any(is_credential(name) for name in forwarded)


@pytest.mark.parametrize(
    "name", ["AWS_SECRET_ACCESS_KEY", "AWS_ACCESS_KEY_ID", "AWS_SESSION_TOKEN", "DB_PASSWORD"]
)
def test_forwarding_a_credential_is_refused_by_name(name: str) -> None:
    with pytest.raises(ValidationError, match=name) as caught:
        RayConfig(forward_env=["ARVID_S3_ENDPOINT_URL", name])
    assert "own credentials" in str(caught.value)

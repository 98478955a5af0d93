"""Config loading: YAML maps onto pydantic models; overrides; errors that name the input."""

from __future__ import annotations

from pathlib import Path

import pytest

from tasks.config import ConfigError, apply_overrides, config_hash, load_config
from tasks.settings import ArvidConfig


def test_demo_config_loads_and_overrides_apply() -> None:
    config = load_config(
        ArvidConfig, None, ["ingest.fps=4", "synthetic.count=3", "ingest.max_duration_s=60"]
    )
    assert (
        config.ingest.fps == 4
        and config.synthetic.count == 3
        and config.ingest.max_duration_s == 60
    )
    assert config_hash(config) != config_hash(load_config(ArvidConfig))


def test_overrides_create_sections_and_reject_bad_syntax() -> None:
    assert apply_overrides({}, ["a.b.c=[1, 2]"]) == {"a": {"b": {"c": [1, 2]}}}
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        apply_overrides({}, ["nonsense"])
    with pytest.raises(ConfigError, match="is a value"):
        apply_overrides({"a": 1}, ["a.b=2"])


def test_invalid_values_and_unknown_keys_name_the_file_and_field(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"demo\.yaml: invalid config: ingest\.clip_frames"):
        load_config(ArvidConfig, None, ["ingest.clip_frames=0"])
    with pytest.raises(ConfigError, match="ingest.typo"):
        load_config(ArvidConfig, None, ["ingest.typo=1"])
    missing = tmp_path / "none.yaml"
    with pytest.raises(ConfigError, match="none.yaml: config file not found"):
        load_config(ArvidConfig, missing)

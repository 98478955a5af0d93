"""Import costs that callers rely on: loading the config must not load the heavy libraries."""

from __future__ import annotations

import json
import subprocess
import sys

HEAVY = ("av", "torch", "boto3", "botocore")


def _modules_after_import(module: str) -> set[str]:
    """Top-level packages in sys.modules after importing `module` in a fresh interpreter."""
    code = (
        f"import json, sys; import {module}; "
        "print(json.dumps(sorted({m.split('.')[0] for m in sys.modules})))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
    )
    return set(json.loads(result.stdout.splitlines()[-1]))


def test_importing_settings_loads_neither_av_torch_nor_boto3():
    loaded = _modules_after_import("tasks.settings")
    assert "pydantic" in loaded  # the probe itself works: the config's own dependency is there
    assert not loaded & set(HEAVY), sorted(loaded & set(HEAVY))


def test_storage_loads_boto3_only_when_s3_is_used(tmp_path):
    code = (
        "import sys; from tasks import storage; "
        f"storage.write_bytes({str(tmp_path / 'x.bin')!r}, b'1'); "
        f"storage.read_bytes({str(tmp_path / 'x.bin')!r}); "
        "print('boto3' in sys.modules); "
        "storage.s3_client(); print('boto3' in sys.modules)"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
    )
    assert result.stdout.split() == ["False", "True"]

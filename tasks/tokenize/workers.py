"""What runs on Ray: shard readers and clip decoders (CPU tasks) and the tokenizer actors.

The driver wraps these with `ray.remote` at run time, so importing this module needs no Ray.
Data flow per shard: one read task splits the shard's mp4 clips into batches (one object per
batch); one decode task per batch turns them into a float32 array; an actor encodes it.
"""

from __future__ import annotations

import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tasks import storage
from tasks.data.clips import clip_tensor, iter_shard
from tasks.data.video import decode_clip
from tasks.tokenize.format import index_dtype

Clip = tuple[dict[str, Any], bytes]


@dataclass
class DecodedBatch:
    """Clips of one batch, decoded and shaped: video (n, 3, T, S, S) float32 in [-1, 1]."""

    keys: list[str]
    metadata: list[dict[str, Any]]
    video: np.ndarray


@dataclass
class EncodedBatch:
    """Token indices of one batch: indices[i][k] is clip i's (t, h_k, w_k) array at scale k."""

    keys: list[str]
    metadata: list[dict[str, Any]]
    indices: list[list[np.ndarray]]
    multiscale: bool
    continuous: list[np.ndarray]  # clip i's (D, t, h, w) float32 pre-quantization latent
    encode_seconds: float
    actor_pid: int


def warm_up() -> int:
    """Import what decoding needs, so a fresh worker is ready before the first batch arrives."""
    import av  # noqa: F401
    import torch  # noqa: F401

    return os.getpid()


def read_shard(
    uri: str, batches: list[list[str]], settings: storage.StorageSettings
) -> list[Clip] | tuple[list[Clip], ...]:
    """Stream one dataset shard and split its clips into the planned batches (one Ray object each)."""
    storage.configure_storage(settings)
    batch_of = {key: i for i, keys in enumerate(batches) for key in keys}
    out: list[list[Clip]] = [[] for _ in batches]
    for metadata, mp4 in iter_shard(uri):
        index = batch_of.get(metadata["key"])
        if index is not None:
            out[index].append((metadata, mp4))
    for keys, clips in zip(batches, out, strict=True):
        found = [metadata["key"] for metadata, _ in clips]
        if found != keys:
            missing = sorted(set(keys) - set(found))
            raise ValueError(
                f"{uri}: the shard does not hold the clips its dataset manifest lists "
                f"(missing {missing[:3]}{'...' if len(missing) > 3 else ''}) — re-ingest the dataset"
            )
    # Ray wants one value per return; with num_returns=1 that value is the only batch itself.
    return tuple(out) if len(out) > 1 else out[0]


def decode_batch(clips: list[Clip], resolution: int, frames: int) -> DecodedBatch:
    """Decode a batch of mp4 clips to (n, 3, frames, resolution, resolution) float32 (center crop)."""
    import torch

    # One thread per decode task: Ray runs several of them beside the actors.
    torch.set_num_threads(1)
    videos = [clip_tensor(decode_clip(mp4), resolution, frames).numpy() for _, mp4 in clips]
    return DecodedBatch(
        keys=[metadata["key"] for metadata, _ in clips],
        metadata=[metadata for metadata, _ in clips],
        video=np.stack(videos),
    )


class TokenizerWorker:
    """Holds one tokenizer (loaded once) and encodes decoded batches on its device.

    The run starts it as a Ray actor; a subclass given to `tokenize_dataset(worker=...)` can
    change what `encode` does (tests kill actors mid-batch that way).
    """

    def __init__(self, files: dict[str, bytes], device: str, num_threads: int) -> None:
        import torch

        from tasks.tokenize.tokenizer_ref import load_from_files

        torch.set_num_threads(num_threads)
        self.device = device
        self._dir = tempfile.TemporaryDirectory(prefix="arvid-tokenizer-")
        self.tokenizer = load_from_files(files, Path(self._dir.name), device)
        self.dtype = index_dtype(self.tokenizer.vocab_size)

    def ready(self) -> dict[str, Any]:
        """Where this actor runs (called once, so start-up is not counted as encode time)."""
        import ray

        node = ray.get_runtime_context().get_node_id()
        return {"device": self.device, "pid": os.getpid(), "node": node}

    def encode(self, batch: DecodedBatch) -> EncodedBatch:
        """Encode a batch of clips to token indices per scale."""
        import torch

        started = time.perf_counter()
        # The object store hands out read-only arrays; torch wants a writable one.
        video = torch.from_numpy(np.array(batch.video)).to(self.device)
        with torch.inference_mode():
            encoding = self.tokenizer.encode(video)
        multiscale = isinstance(encoding.indices, list)
        scales = encoding.indices if multiscale else [encoding.indices]
        arrays = [s.cpu().numpy().astype(self.dtype) for s in scales]  # each (n, t, h_k, w_k)
        indices = [[a[i] for a in arrays] for i in range(len(batch.keys))]
        latent = encoding.continuous.float().cpu().numpy()  # (n, D, t, h, w)
        return EncodedBatch(
            keys=batch.keys,
            metadata=batch.metadata,
            indices=indices,
            multiscale=multiscale,
            continuous=list(latent),
            encode_seconds=time.perf_counter() - started,
            actor_pid=os.getpid(),
        )

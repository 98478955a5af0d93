"""The token shard format: webdataset tars of per-clip token indices (.npy) and metadata (.json).

One clip is a group of tar members sharing the clip's key (keys never contain dots):

    <key>.json              the clip's metadata from the dataset (label, caption, source, ...) plus
                            "token_shapes": [[t, h_k, w_k], ...], one entry per scale
    <key>.tokens.npy        single-scale tokenizer: indices (t, h, w)
    <key>.tokens.<k>.npy    multi-scale tokenizer: indices of scale k (t, h_k, w_k), k = 0 coarsest
    <key>.latent.npy        optional (tokenize.latents): the continuous pre-quantization latent
                            (D, t, h, w) float32, which VideoAR's error correction re-quantizes

Indices are plain .npy (never pickled: read with allow_pickle=False) in the smallest unsigned
dtype that holds the vocabulary (uint16 for FSQ 8,8,8,5,5,5); webdataset's default decoders read
them as numpy arrays. Members are sorted by key and carry fixed owner, mode and mtime, so the
same tokens always give byte-identical shards.
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from tasks.data.tar import deterministic_tar, read_samples

FORMAT_VERSION = 1


@dataclass
class TokenizedClip:
    """One clip's tokens: indices per scale (a single entry for a single-scale tokenizer)."""

    key: str
    metadata: dict[str, Any]
    indices: list[np.ndarray]
    multiscale: bool
    continuous: np.ndarray | None = None  # (D, t, h, w) float32, when tokenized with latents

    @property
    def token_shapes(self) -> list[list[int]]:
        """(t, h_k, w_k) of every scale."""
        return [list(a.shape) for a in self.indices]

    def tokenizer_indices(self) -> Any:
        """The indices as VideoTokenizer.decode_indices takes them, with a batch of one."""
        import torch

        tensors = [torch.from_numpy(a.astype(np.int64))[None] for a in self.indices]
        return tensors if self.multiscale else tensors[0]


def index_dtype(vocab_size: int) -> np.dtype:
    """The smallest dtype that holds every token id of a vocabulary."""
    if vocab_size <= np.iinfo(np.uint16).max + 1:
        return np.dtype(np.uint16)
    return np.dtype(np.int32)


def _npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, np.ascontiguousarray(array), allow_pickle=False)
    return buffer.getvalue()


def _clip_members(clip: TokenizedClip) -> Iterable[tuple[str, bytes]]:
    metadata = {**clip.metadata, "token_shapes": clip.token_shapes}
    yield f"{clip.key}.json", json.dumps(metadata, sort_keys=True).encode()
    if clip.multiscale:
        for k, array in enumerate(clip.indices):
            yield f"{clip.key}.tokens.{k}.npy", _npy(array)
    else:
        yield f"{clip.key}.tokens.npy", _npy(clip.indices[0])
    if clip.continuous is not None:
        yield f"{clip.key}.latent.npy", _npy(clip.continuous.astype(np.float32))


def token_shard_bytes(clips: Iterable[TokenizedClip]) -> bytes:
    """A webdataset tar of the clips (sorted by key), byte-deterministic."""
    ordered = sorted(clips, key=lambda c: c.key)
    return deterministic_tar(member for clip in ordered for member in _clip_members(clip))


def _clip_from_members(key: str, members: dict[str, bytes]) -> TokenizedClip:
    metadata = json.loads(members.pop("json"))
    if "tokens.npy" in members:
        arrays, multiscale = [members.pop("tokens.npy")], False
    else:
        count = len(metadata["token_shapes"])
        arrays, multiscale = [members.pop(f"tokens.{k}.npy") for k in range(count)], True
    indices = [np.load(io.BytesIO(data), allow_pickle=False) for data in arrays]
    latent = members.pop("latent.npy", None)
    continuous = None if latent is None else np.load(io.BytesIO(latent), allow_pickle=False)
    return TokenizedClip(
        key=key, metadata=metadata, indices=indices, multiscale=multiscale, continuous=continuous
    )


def read_token_shard(uri: str) -> Iterator[TokenizedClip]:
    """Every clip of one token shard, in shard order (streamed, local or S3)."""
    for key, members in read_samples(uri):
        yield _clip_from_members(key, members)

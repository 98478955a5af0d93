"""Token datasets in memory: the clips of some token shards as index arrays, with class ids.

Tokens are small (a 5×16×16 clip of uint16 ids is 2.5 KB), so a worker holds its split whole and
the batch plan indexes it; the shards are read once with the one token-shard reader.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np

from tasks import storage
from tasks.tokenize.format import read_token_shard


@dataclass
class TokenClips:
    """Clips of a token dataset split: ids per scale, (N, t, h_k, w_k) int64, and class ids."""

    keys: list[str]
    scales: list[np.ndarray]
    labels: np.ndarray  # (N,) int64; the null class id where a clip has no label
    continuous: np.ndarray | None = None  # (N, D, t, h, w) float32, tokenized with latents

    def __len__(self) -> int:
        return len(self.keys)

    @property
    def tokens_per_clip(self) -> int:
        """Tokens of one clip, all scales."""
        return sum(int(np.prod(a.shape[1:])) for a in self.scales)


@dataclass(frozen=True)
class TokenDatasetInfo:
    """What a published token dataset folder says about itself (manifest + tokens.json)."""

    uri: str
    version: str
    rows: list[dict]
    token_shapes: list[list[int]]
    shards: list[str]

    def split(self, val_shards: int) -> tuple[list[str], list[str]]:
        """(train shards, validation shards): the last `val_shards` shards by name are held out."""
        if val_shards and val_shards >= len(self.shards):
            raise ValueError(
                f"{self.uri}: {len(self.shards)} token shard(s), so val_shards={val_shards} would "
                "leave nothing to train on — lower pretrain.val_shards or ingest more inputs"
            )
        cut = len(self.shards) - val_shards
        return self.shards[:cut], self.shards[cut:]


def read_token_dataset(uri: str) -> TokenDatasetInfo:
    """Read a token dataset's manifest (its commit point) and tokens.json; errors name the folder."""
    manifest = storage.join(uri, "manifest.jsonl")
    if not storage.exists(manifest):
        raise FileNotFoundError(
            f"{uri}: no published token dataset here (no manifest.jsonl) — run `arvid tokenize`"
        )
    text = storage.read_text(manifest)
    rows = [json.loads(line) for line in text.splitlines() if line.strip()]
    info = json.loads(storage.read_text(storage.join(uri, "tokens.json")))
    return TokenDatasetInfo(
        uri=uri,
        version=info["tokens_version"],
        rows=rows,
        token_shapes=info["token_shapes"],
        shards=sorted({row["shard"] for row in rows}),
    )


def class_names(rows: list[dict]) -> list[str]:
    """The sorted class labels of a dataset's rows (clips without a label have none)."""
    return sorted({str(row["label"]) for row in rows if row.get("label") not in (None, "")})


def load_token_clips(
    dataset: TokenDatasetInfo, shards: list[str], classes: list[str], null_class: int
) -> TokenClips:
    """Every clip of `shards` (in key order) as arrays; a label outside `classes` is an error."""
    index = {name: i for i, name in enumerate(classes)}
    clips = []
    for shard in shards:
        clips.extend(read_token_shard(storage.join(dataset.uri, shard)))
    clips.sort(key=lambda clip: clip.key)
    if not clips:
        raise ValueError(f"{dataset.uri}: shards {shards} hold no clips")
    labels = []
    for clip in clips:
        label = clip.metadata.get("label")
        if label in (None, ""):
            labels.append(null_class)
        elif str(label) in index:
            labels.append(index[str(label)])
        else:
            raise ValueError(
                f"{dataset.uri}: clip {clip.key} has label {label!r}, unknown to this model "
                f"(classes {classes[:5]}...) — pretrain every stage on the same dataset"
            )
    count = len(clips[0].indices)
    scales = [np.stack([clip.indices[k] for clip in clips]).astype(np.int64) for k in range(count)]
    latents = [clip.continuous for clip in clips]
    continuous = None
    if all(latent is not None for latent in latents):
        continuous = np.stack(latents).astype(np.float32)
    return TokenClips(
        keys=[clip.key for clip in clips],
        scales=scales,
        labels=np.array(labels, dtype=np.int64),
        continuous=continuous,
    )

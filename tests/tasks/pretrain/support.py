"""Small token datasets written in the published token-dataset layout (shards, manifest, tokens.json)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from tasks.data.manifest import jsonl, manifest_version
from tasks.tokenize.format import TokenizedClip, token_shard_bytes

CLASSES = ("left", "right", "up")


def write_token_dataset(
    root: Path,
    shapes: list[tuple[int, int, int]],
    vocab: int,
    clips: int = 24,
    shards: int = 3,
    seed: int = 0,
    levels: list[int] | None = None,
) -> str:
    """A token folder of `clips` clips over `shards` shards; ids follow a simple learnable rule
    (each frame repeats the previous one, shifted) so a model can beat the unigram baseline.

    With FSQ `levels` and one shape per scale, the clips are a real multi-scale quantization of a
    moving random latent, stored with that continuous latent (as tokenize.latents stores it).
    """
    rng = np.random.default_rng(seed)
    rows, per_shard = [], {}
    for i in range(clips):
        key = f"clip{i:04d}"
        label = CLASSES[i % len(CLASSES)]
        shift = CLASSES.index(label)
        continuous = None
        if levels is not None:
            indices, continuous = _quantized_clip(rng, shapes, levels, shift)
        else:
            indices = []
            for t, h, w in shapes:
                first = rng.integers(0, vocab, size=(h, w))
                frames = [np.roll(first, shift=(s, shift), axis=(0, 1)) for s in range(t)]
                indices.append(np.stack(frames).astype(np.uint16))
        shard = f"shards/shard-{i % shards}.tar"
        clip = TokenizedClip(
            key=key,
            metadata={"key": key, "label": label},
            indices=indices,
            multiscale=len(shapes) > 1,
            continuous=continuous,
        )
        per_shard.setdefault(shard, []).append(clip)
        rows.append({"key": key, "label": label, "shard": shard, "token_shapes": clip.token_shapes})
    for shard, members in per_shard.items():
        path = root / shard
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(token_shard_bytes(members))
    text = jsonl(sorted(rows, key=lambda r: r["key"]))
    (root / "manifest.jsonl").write_text(text)
    (root / "tokens.json").write_text(
        json.dumps(
            {"tokens_version": manifest_version(text), "token_shapes": [list(s) for s in shapes]}
        )
    )
    return str(root)


def _quantized_clip(
    rng: np.random.Generator, shapes: list[tuple[int, int, int]], levels: list[int], shift: int
) -> tuple[list[np.ndarray], np.ndarray]:
    import torch

    from models.tokenizer.multiscale import MultiScaleFSQ

    t, side, _ = shapes[-1]
    quantizer = MultiScaleFSQ(levels, [h for _, h, _ in shapes])
    first = rng.normal(size=(len(levels), side, side))
    frames = [np.roll(first, shift=(s, shift), axis=(1, 2)) for s in range(t)]
    z = torch.from_numpy(np.stack(frames, axis=1)[None]).float()  # (1, D, t, side, side)
    with torch.no_grad():
        _, continuous, indices = quantizer(z)
    return [k[0].numpy().astype(np.uint16) for k in indices], continuous[0].numpy()

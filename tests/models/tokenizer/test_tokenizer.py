import json
import subprocess
import sys

import pytest
import torch

from models.tokenizer.tokenizer import (
    TokenizerConfig,
    VideoTokenizer,
    load_tokenizer_from_dir,
    save_tokenizer,
)


def tiny(**overrides) -> VideoTokenizer:
    """A CPU-sized tokenizer: 8x space, 4x time, a few thousand weights."""
    settings = {"base_channels": 4, "channel_multipliers": [1, 2, 2, 4], "num_res_blocks": 1}
    torch.manual_seed(0)
    return VideoTokenizer(TokenizerConfig(**(settings | overrides))).eval()


def scrambled(tokenizer: VideoTokenizer) -> VideoTokenizer:
    """Random values in every weight: zero-initialised branches would hide a causality leak."""
    generator = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for parameter in tokenizer.parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.2)
    return tokenizer


def video(frames: int, height: int = 32, width: int = 32, batch: int = 1) -> torch.Tensor:
    return (
        torch.rand(batch, 3, frames, height, width, generator=torch.Generator().manual_seed(1)) * 2
        - 1
    )


@pytest.mark.parametrize("scales", [None, [1, 2, 4]], ids=["fsq", "multiscale"])
@torch.no_grad()
def test_encoding_a_prefix_gives_exactly_the_first_latent_frames(scales):
    tokenizer = scrambled(tiny(scales=scales))
    clip = video(17)
    full = tokenizer.encode(clip)
    assert full.continuous.shape[2] == 5
    for k in range(4):
        prefix = tokenizer.encode(clip[:, :, : 1 + 4 * k])
        assert torch.allclose(prefix.continuous, full.continuous[:, :, : 1 + k], atol=1e-5)
        assert torch.allclose(prefix.quantized, full.quantized[:, :, : 1 + k], atol=1e-5)


@torch.no_grad()
def test_decoding_a_latent_prefix_gives_exactly_the_first_frames():
    tokenizer = scrambled(tiny())
    latent = tokenizer.encode(video(17)).quantized  # (1, 6, 5, 4, 4)
    frames = tokenizer.decode(latent)
    for k in range(4):
        assert torch.allclose(
            tokenizer.decode(latent[:, :, : 1 + k]), frames[:, :, : 1 + 4 * k], atol=1e-5
        )


@pytest.mark.parametrize(
    ("overrides", "shape", "latent"),
    [
        ({}, (1, 32, 32), (1, 4, 4)),
        ({}, (5, 32, 64), (2, 4, 8)),
        ({}, (17, 64, 48), (5, 8, 6)),
        ({"spatial_factor": 16, "channel_multipliers": [1, 1, 2, 2, 4]}, (9, 64, 32), (3, 4, 2)),
        ({"temporal_factor": 2}, (7, 16, 24), (4, 2, 3)),
        ({"scales": [1, 2, 4]}, (9, 32, 32), (3, 4, 4)),
        ({"patch_size": 2, "channel_multipliers": [1, 2, 4]}, (9, 32, 48), (3, 4, 6)),
    ],
    ids=["image", "wide", "tall-17", "16x-space", "2x-time", "multiscale", "patch-2"],
)
@torch.no_grad()
def test_shapes_round_trip_for_valid_sizes(overrides, shape, latent):
    tokenizer = tiny(**overrides)
    clip = video(*shape, batch=2)
    assert tokenizer.latent_shape(*shape) == latent
    encoding = tokenizer.encode(clip)
    assert encoding.quantized.shape == encoding.continuous.shape == (2, 6, *latent)
    if tokenizer.scales is None:
        assert encoding.indices.shape == (2, *latent) and encoding.indices.dtype == torch.long
    else:
        shapes = tokenizer.scale_shapes(*latent[1:])
        assert [tuple(i.shape) for i in encoding.indices] == [(2, latent[0], *s) for s in shapes]
    reconstruction, aux = tokenizer(clip)
    assert reconstruction.shape == clip.shape
    assert 0 < aux["code_usage"] <= 1


@pytest.mark.parametrize(
    ("shape", "message"),
    [
        ((16, 32, 32), "T=16 frames: the tokenizer needs T = 1 + 4n (e.g. 13 or 17)"),
        ((0, 32, 32), "T=0 frames: the tokenizer needs T = 1 + 4n (e.g. 1)"),
        ((17, 60, 32), "H=60: the tokenizer needs H divisible by 8 (e.g. 56 or 64)"),
        ((17, 32, 4), "W=4: the tokenizer needs W divisible by 8 (e.g. 8)"),
    ],
)
def test_sizes_that_do_not_fit_raise_errors_naming_size_and_rule(shape, message):
    tokenizer = tiny()
    with pytest.raises(ValueError) as error:
        tokenizer.check_input_shape(*shape)
    assert str(error.value) == message
    with pytest.raises(ValueError, match="the tokenizer needs"):
        tokenizer.encode(torch.zeros(1, 3, *shape)) if min(shape) > 0 else tokenizer.latent_shape(
            *shape
        )


def test_configs_that_cannot_build_are_rejected_with_the_reason():
    with pytest.raises(ValueError, match="spatial_factor=16"):
        TokenizerConfig(spatial_factor=16)  # 4 multipliers only give 8x
    with pytest.raises(ValueError, match="temporal_factor=3"):
        TokenizerConfig(temporal_factor=3)
    with pytest.raises(ValueError, match="scale_gains"):
        TokenizerConfig(scales=[1, 2], scale_gains=[1.0])
    with pytest.raises(ValueError, match="scales"):
        TokenizerConfig(scales=[4, 2])
    with pytest.raises(ValueError, match=r"spatial_factor=8.*patch_size=2"):
        TokenizerConfig(patch_size=2)  # 2 x 2**3 is 16x, not 8x
    with pytest.raises(ValueError, match="patch_size=3"):
        TokenizerConfig(patch_size=3)
    with pytest.raises(ValueError, match="temporal_factor=4: at most 2"):
        TokenizerConfig(patch_size=4, channel_multipliers=[1, 2])  # one conv stage: 2x in time


@pytest.mark.parametrize("scales", [None, [1, 2, 4]], ids=["fsq", "multiscale"])
@torch.no_grad()
def test_decoding_indices_matches_decoding_the_quantized_latent(scales):
    tokenizer = tiny(scales=scales)
    encoding = tokenizer.encode(video(5))
    assert torch.equal(tokenizer.indices_to_latent(encoding.indices), encoding.quantized)
    assert torch.equal(
        tokenizer.decode_indices(encoding.indices), tokenizer.decode(encoding.quantized)
    )


@torch.no_grad()
def test_generator_rebuilds_tokens_from_the_config_alone():
    tokenizer = tiny(scales=[1, 2, 4])
    encoding = tokenizer.encode(video(9))
    config = TokenizerConfig.model_validate_json(tokenizer.config.model_dump_json())
    quantizer = config.make_quantizer()  # no tokenizer weights involved
    assert sum(p.numel() for p in quantizer.parameters()) == 0
    assert torch.equal(quantizer.accumulate(encoding.indices, (4, 4)), encoding.quantized)


@torch.no_grad()
def test_continuous_latent_is_in_code_units_and_decodable():
    tokenizer = tiny()
    encoding = tokenizer.encode(video(5))
    assert encoding.continuous.abs().max() <= 1.0
    # Rounding the continuous latent onto the grid gives the quantized one.
    assert (encoding.continuous - encoding.quantized).abs().max() <= 0.25 + 1e-6
    assert tokenizer.decode(encoding.continuous).shape == (1, 3, 5, 32, 32)


@pytest.mark.parametrize("scales", [None, [1, 2, 4]], ids=["fsq", "multiscale"])
@torch.no_grad()
def test_saved_tokenizer_loads_to_identical_outputs(tmp_path, scales):
    tokenizer = tiny(scales=scales)
    for p in tokenizer.parameters():  # move off the init so a silent re-init would show
        p.add_(0.01 * torch.randn_like(p))
    save_tokenizer(tokenizer, tmp_path / "tok")
    assert sorted(f.name for f in (tmp_path / "tok").iterdir()) == [
        "config.json",
        "model.safetensors",
    ]
    loaded = load_tokenizer_from_dir(tmp_path / "tok").eval()
    clip = video(5)
    before, after = tokenizer.encode(clip), loaded.encode(clip)
    assert torch.equal(before.continuous, after.continuous)
    assert torch.equal(tokenizer.decode(before.quantized), loaded.decode(after.quantized))
    if scales is not None:
        gains = json.loads((tmp_path / "tok" / "config.json").read_text())["scale_gains"]
        assert gains == pytest.approx([1.0, 2**0.5, 2.0])  # pinned in the file, not re-derived


@torch.no_grad()
def test_decoder_output_has_a_linear_path_and_older_saves_load_without_one(tmp_path):
    tokenizer = tiny()
    assert tokenizer.decoder.linear_out is not None
    latent = tokenizer.encode(video(5)).quantized
    # The path is linear in the decoder's last features: scaling its weights moves the output.
    before = tokenizer.decode(latent)
    tokenizer.decoder.linear_out.weight.mul_(2)
    assert not torch.allclose(before, tokenizer.decode(latent))

    older = tiny(linear_output=False)
    assert older.decoder.linear_out is None
    save_tokenizer(older, tmp_path / "older")
    config_file = tmp_path / "older" / "config.json"
    raw = json.loads(config_file.read_text())
    del raw["linear_output"]  # a config.json written before the field existed
    config_file.write_text(json.dumps(raw))
    loaded = load_tokenizer_from_dir(tmp_path / "older").eval()
    assert loaded.decoder.linear_out is None
    clip = video(5)
    assert torch.equal(older.eval()(clip)[0], loaded(clip)[0])


def test_properties_describe_the_token_grid():
    tokenizer = tiny(scales=[1, 2, 4])
    assert (tokenizer.temporal_factor, tokenizer.spatial_factor) == (4, 8)
    assert tokenizer.vocab_size == 64_000
    assert tokenizer.scales == [1, 2, 4]
    assert tiny().scales is None


def test_models_package_imports_no_pipeline_libraries():
    code = (
        "import sys, models.tokenizer; "
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'prefect', 'mlflow', 'ray', 'boto3'}))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_patchify_folds_each_pixel_offset_into_its_own_channels_and_back():
    from models.tokenizer.causal3d import channels_to_space_time, space_time_to_channels

    x = torch.randn(2, 3, 5, 8, 12, generator=torch.Generator().manual_seed(0))
    folded = space_time_to_channels(x, 1, 2)  # the encoder's patchify with patch_size 2
    assert folded.shape == (2, 12, 5, 4, 6)
    assert torch.equal(folded[:, 0::4], x[..., 0::2, 0::2])  # channel c * 4 + row * 2 + column
    assert torch.equal(folded[:, 3::4], x[..., 1::2, 1::2])
    assert torch.equal(channels_to_space_time(folded, 1, 2), x)
    assert space_time_to_channels(x, 1, 1) is x
    # In time the first frame is padded with its own copy, as the causal convs pad it.
    folded = space_time_to_channels(x, 2, 2)
    assert folded.shape == (2, 24, 3, 4, 6)
    assert torch.equal(channels_to_space_time(folded, 2, 2), x)


def test_resize_channels_averages_groups_and_keeps_the_channel_mean():
    from models.tokenizer.causal3d import resize_channels

    x = torch.randn(2, 32, 3, 4, 4, generator=torch.Generator().manual_seed(0))
    down = resize_channels(x, 8)
    assert torch.allclose(down, x.unflatten(1, (8, 4)).mean(dim=2))
    for channels in (6, 8, 48):  # any size, through the lcm
        out = resize_channels(x, channels)
        assert out.shape == (2, channels, 3, 4, 4)
        assert torch.allclose(out.mean(dim=1), x.mean(dim=1), atol=1e-5)
    assert resize_channels(x, 32) is x


@pytest.mark.parametrize(
    "overrides",
    [
        {"shortcuts": True},
        {"shortcuts": False},
        {"patch_size": 2, "channel_multipliers": [1, 2, 4]},
    ],
    ids=["shortcuts", "plain", "patch-2"],
)
@torch.no_grad()
def test_both_paths_stay_causal_with_and_without_shortcuts(overrides):
    tokenizer = scrambled(tiny(scales=[1, 2, 4], **overrides))
    clip = video(9)
    full = tokenizer.encode(clip)
    frames = tokenizer.decode(full.quantized)
    for k in range(2):
        prefix = tokenizer.encode(clip[:, :, : 1 + 4 * k])
        assert torch.allclose(prefix.continuous, full.continuous[:, :, : 1 + k], atol=1e-5)
        decoded = tokenizer.decode(full.quantized[:, :, : 1 + k])
        assert torch.allclose(decoded, frames[:, :, : 1 + 4 * k], atol=1e-5)


def test_the_config_alone_knows_the_clip_shape_rule():
    config = TokenizerConfig(temporal_factor=2, spatial_factor=16, channel_multipliers=[1] * 5)
    assert config.latent_shape(7, 32, 64) == (4, 2, 4)
    assert config.frames_fit(9) and not config.frames_fit(8) and not config.frames_fit(0)
    assert config.side_fits(48) and not config.side_fits(40) and not config.side_fits(0)
    with pytest.raises(
        ValueError, match=r"^T=8 frames: the tokenizer needs T = 1 \+ 2n \(e.g. 7 or 9\)$"
    ):
        config.check_clip_shape(8, 32, 32)
    with pytest.raises(ValueError, match=r"^W=40: .* divisible by 16 \(e.g. 32 or 48\)$"):
        config.latent_shape(9, 32, 40)


def calibrated_tiny() -> VideoTokenizer:
    """A multi-scale tiny tokenizer whose gains moved off their start in training forwards."""
    tokenizer = tiny(scales=[1, 2, 4]).train()
    start = tokenizer.config.scale_gains
    with torch.no_grad():
        for seed in range(3):
            tokenizer(video(5, batch=2) * (0.5 + seed))
    assert tokenizer.config.scale_gains != start
    return tokenizer.eval()


@torch.no_grad()
def test_training_forward_calibrates_the_gains_and_eval_freezes_them():
    tokenizer = calibrated_tiny()
    frozen = tokenizer.quantizer.gain_values()
    _, aux = tokenizer(video(5, batch=2))
    assert tokenizer.quantizer.gain_values() == frozen
    assert {"saturation/scale2", "residual_rms/scale0", "gain/scale1"} <= set(aux)
    # What resumes a run: the config it was built from, gains as given.
    assert tokenizer.built_config.scale_gains == pytest.approx([1.0, 2**0.5, 2.0])


@torch.no_grad()
def test_calibrated_tokens_decode_identically_from_indices_after_a_save_and_load(tmp_path):
    tokenizer = calibrated_tiny()
    save_tokenizer(tokenizer, tmp_path / "tok")
    saved = json.loads((tmp_path / "tok" / "config.json").read_text())["scale_gains"]
    assert saved == tokenizer.quantizer.gain_values()
    loaded = load_tokenizer_from_dir(tmp_path / "tok").eval()
    clip = video(9)
    encoding = tokenizer.encode(clip)
    assert torch.equal(
        loaded.decode_indices(encoding.indices), tokenizer.decode(encoding.quantized)
    )
    # The generator's side: the saved config alone, no weights.
    quantizer = TokenizerConfig.model_validate(saved_config(tmp_path)).make_quantizer()
    assert torch.equal(quantizer.accumulate(encoding.indices, (4, 4)), encoding.quantized)


def saved_config(tmp_path) -> dict:
    return json.loads((tmp_path / "tok" / "config.json").read_text())

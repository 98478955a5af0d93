import torch

from models.tokenizer.losses import reconstruction_loss
from models.tokenizer.metrics import psnr
from models.tokenizer.tokenizer import TokenizerConfig, VideoTokenizer


def moving_pattern(frames: int = 5, size: int = 32) -> torch.Tensor:
    """A smooth clip with motion in every channel, (1, 3, T, H, W) in [-1, 1]."""
    t = torch.arange(frames).float().view(frames, 1, 1)
    y = torch.linspace(-1, 1, size).view(1, size, 1)
    x = torch.linspace(-1, 1, size).view(1, 1, size)
    red = torch.sin(3 * x + 0.4 * t) * torch.cos(2 * y)
    green = torch.exp(-6 * ((x - 0.3 * torch.cos(0.5 * t)) ** 2 + (y - 0.2) ** 2)) * 2 - 1
    blue = torch.tanh(2 * (x + y) - 0.3 * t)
    return torch.stack([red, green, blue]).unsqueeze(0).clamp(-1, 1)


def test_tiny_multiscale_autoencoder_overfits_one_clip():
    torch.manual_seed(0)
    clip = moving_pattern()
    tokenizer = VideoTokenizer(
        TokenizerConfig(
            base_channels=4, channel_multipliers=[1, 2, 2, 4], num_res_blocks=1, scales=[1, 2, 4]
        )
    )
    optimizer = torch.optim.Adam(tokenizer.parameters(), lr=5e-3)
    with torch.no_grad():
        start = psnr(tokenizer(clip)[0], clip).item()
    # One thread: on a busy 2-core machine, OpenMP spin-waiting made two threads 2-3x slower here.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for _ in range(60):
            reconstruction, _ = tokenizer(clip)
            loss = reconstruction_loss(reconstruction, clip)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    finally:
        torch.set_num_threads(threads)
    with torch.no_grad():
        end = psnr(tokenizer.decode_indices(tokenizer.encode(clip).indices), clip).item()
    # Predicting the clip's mean colour scores about 10 dB; a working autoencoder gets past 20.
    assert end > 20.0 and end > start + 8.0, (start, end)

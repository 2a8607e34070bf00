"""Peak memory of Score-CAM does not grow with the number of channels K.

Measured as the peak resident memory (VmHWM) of fresh child processes, which counts torch's CPU
tensors (``tracemalloc`` does not see them). The classifier is a cheap probe
with K feature channels at 1/32 of a 512 x 512 input, so the forward passes
cost the same memory at every K and only Score-CAM's own buffers could grow:
holding all K masked inputs at once would take K MB at this size.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import napari_artseg
from child_memory import PRINT_PEAK_RSS

SIZE = 512
K_SMALL, K_LARGE = 64, 512
MB = 2**20

CHILD = r"""
import sys
import torch
from torch import nn
torch.set_num_threads(1)
from napari_artseg.scorecam import normalise_maps, scorecam, upsample_to

k, mode, size = int(sys.argv[1]), sys.argv[2], int(sys.argv[3])


class Probe(nn.Module):
    def __init__(self, k):
        super().__init__()
        self.down = nn.Conv2d(1, 4, 8, stride=8)
        self.up = nn.Conv2d(4, k, 4, stride=4)
        self.fc = nn.Linear(k, 1)
        self.num_feature_channels = k

    def features(self, x):
        return torch.relu(self.up(torch.relu(self.down(x))))

    def forward(self, x):
        return self.fc(self.features(x).mean(dim=(2, 3))).squeeze(-1)


torch.manual_seed(0)
model = Probe(k).eval()
image = torch.randn(1, 1, size, size)
if mode == "scorecam":
    maps = scorecam(model, image, batch_size=8)
    assert maps.shape == (1, size, size) and float(maps.max()) == 1.0
else:  # what an implementation that materialises every masked input holds at once
    with torch.inference_mode():
        acts = model.features(image)[0]
        masked = image * normalise_maps(upsample_to(acts, (size, size)))[:, None]
        assert masked.shape == (k, 1, size, size)
""" + PRINT_PEAK_RSS


def _peak_bytes(k: int, mode: str) -> int:
    """Peak resident memory of a fresh child process running ``mode`` at ``k`` channels."""
    src = str(Path(napari_artseg.__file__).resolve().parents[1])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        p for p in (src, os.environ.get("PYTHONPATH", "")) if p)}
    done = subprocess.run([sys.executable, "-c", CHILD, str(k), mode, str(SIZE)],
                          capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr
    line = next(x for x in done.stdout.splitlines() if x.startswith("MAXRSS_KB"))
    return int(line.split()[1]) * 1024


def test_scorecam_peak_memory_does_not_grow_with_k() -> None:
    small = _peak_bytes(K_SMALL, "scorecam")
    large = _peak_bytes(K_LARGE, "scorecam")
    # all K masked float32 inputs of SIZE x SIZE: 448 MB more at K_LARGE than at K_SMALL
    materialised_growth = (K_LARGE - K_SMALL) * SIZE * SIZE * 4
    assert materialised_growth == 448 * MB
    assert large - small < 0.1 * materialised_growth, (small / MB, large / MB)
    # the measurement does see torch's tensors: materialising them shows the growth
    all_masks = _peak_bytes(K_LARGE, "materialise")
    assert all_masks - large > 0.8 * materialised_growth, (large / MB, all_masks / MB)
    print(f"\npeak RSS: Score-CAM K={K_SMALL} {small / MB:.0f} MB, K={K_LARGE} {large / MB:.0f} MB;"
          f" all K={K_LARGE} masked inputs materialised {all_masks / MB:.0f} MB")

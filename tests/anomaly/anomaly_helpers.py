"""Settings shared by the anomaly-detector tests."""

from __future__ import annotations

#: Tiny networks and 40 training steps: each fit takes seconds on one CPU thread.
TINY_PARAMS: dict[str, dict] = {
    "ae_ssim": {"patch_size": 32, "width": 8, "latent": 32, "epochs": 2,
                "steps_per_epoch": 20, "batch_size": 8},
    "padim": {"crop_size": 32, "d": 12, "n_crops": 200, "layers": [1, 2], "ae_patch_size": 32,
              "ae_width": 8, "ae_latent": 32, "epochs": 2, "steps_per_epoch": 20,
              "batch_size": 8},
    "patchsvdd": {"patch_sizes": [32, 64], "width": 8, "dim": 16, "epochs": 2,
                  "steps_per_epoch": 20, "batch_size": 16, "memory_size": 1000},
}

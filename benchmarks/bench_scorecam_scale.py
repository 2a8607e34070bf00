"""Why Score-CAM's approximations move a classifier's maps: logits at reduced scale, mask spread.

For the classifier of a model folder and the artifact views of a held-out synthetic
set (the same views as ``bench_scorecam.py``), this measures the two things the
approximate modes rely on:

1. **Scoring at a reduced resolution** (``score_scale``) keeps the maps only if the
   classifier scores a masked input about the same when it is shrunk. For every
   view and channel the masked input is scored at full size and at 0.5x, 0.25x and
   0.125x (image area-averaged, as ``ScoreCam`` does); printed: the correlation of
   the reduced-scale logits with the full-size ones, their mean offset, and the mean
   absolute change of the channel weights ``sigmoid(logit)`` (the ``probability``
   weighting of the ``fast`` preset). The unmasked view's logit offset is printed too.
2. **How far each channel's mask spreads** over the view: the share of the view
   where the min-max normalised activation map exceeds 0.1, and the area of the
   bounding box of that region. Masks that cover the whole view leave nothing for
   a crop of the masked input to save.

Usage::

    python benchmarks/bench_scorecam_scale.py --model path/to/model_folder \
        --json benchmarks/results/perf_scorecam_scale_seed0.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

from bench_common import machine, run_main
from bench_scorecam import add_model_view_arguments, model_classifier, test_views
from napari_artseg.atomic import atomic_write_text
from napari_artseg.scorecam import constant_channels
from napari_artseg.scorecam_passes import masks_in_place
from napari_artseg.scorecam_tuning import feature_network, scoring_network

SCALES = (0.5, 0.25, 0.125)
SPREAD_LEVEL = 0.1


def masked_logits(network, view: torch.Tensor, acts: torch.Tensor, scale: float,
                  chunk: int = 8) -> tuple[torch.Tensor, float]:
    """Logits (K,) of the view masked by each channel, scored at ``scale``; the plain view's."""
    size = (round(view.shape[-2] * scale), round(view.shape[-1] * scale))
    small = view if scale == 1 else F.interpolate(view[None], size=size, mode="area")[0]
    masks = masks_in_place(acts.clone(), constant_channels(acts), size)
    inputs = (small[None] * masks[:, None]).contiguous(memory_format=torch.channels_last)
    logits = torch.cat([network(inputs[i : i + chunk]).double().reshape(-1)
                        for i in range(0, len(inputs), chunk)])
    plain = float(network(small[None].contiguous(memory_format=torch.channels_last)).double())
    return logits, plain


def spread(acts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per channel: share of the grid above ``SPREAD_LEVEL`` of its range, and its bounding
    box's share of the grid."""
    low = acts.amin(dim=(-2, -1), keepdim=True)
    span = (acts.amax(dim=(-2, -1), keepdim=True) - low).clamp_min(1e-12)
    above = (acts - low) / span > SPREAD_LEVEL
    share = above.flatten(1).float().mean(1)

    def extent(hit: torch.Tensor) -> torch.Tensor:
        index = torch.arange(hit.shape[-1], dtype=torch.float32)
        first = torch.where(hit, index, float("inf")).amin(-1)
        last = torch.where(hit, index, -1.0).amax(-1)
        return ((last - first + 1).clamp_min(0) / hit.shape[-1]).nan_to_num(0.0)

    box = extent(above.any(dim=-1)) * extent(above.any(dim=-2))
    return share, box


def main() -> int:
    """Run the measurement, print the table and write the JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_model_view_arguments(parser)
    parser.add_argument("--json", help="default: benchmarks/results/perf_scorecam_scale.json")
    args = parser.parse_args()
    args.json = args.json or "benchmarks/results/perf_scorecam_scale.json"
    torch.set_num_threads(args.threads)
    classifier, config = model_classifier(args.model)
    features = feature_network(classifier, True, True)
    network = scoring_network(classifier, True, True)
    views = [view for view, _ in test_views(args, config)]
    full, plain_full, reduced, plain_reduced = [], [], {s: [] for s in SCALES}, {
        s: [] for s in SCALES}
    shares, boxes = [], []
    with torch.inference_mode():
        for view in views:
            acts = features(view[None])[0].float().contiguous()
            logits, plain = masked_logits(network, view, acts, 1.0)
            full.append(logits)
            plain_full.append(plain)
            for scale in SCALES:
                logits, plain = masked_logits(network, view, acts, scale)
                reduced[scale].append(logits)
                plain_reduced[scale].append(plain)
            share, box = spread(acts)
            shares.append(share)
            boxes.append(box)
    exact = torch.stack(full)
    rows = []
    for scale in SCALES:
        scaled = torch.stack(reduced[scale])
        corr = float(torch.corrcoef(torch.stack([exact.flatten(), scaled.flatten()]))[0, 1])
        rows.append({
            "score_scale": scale, "logit_correlation": corr,
            "mean_logit_offset": float((scaled - exact).mean()),
            "mean_abs_weight_change": float((torch.sigmoid(scaled)
                                             - torch.sigmoid(exact)).abs().mean()),
            "plain_view_logit_offset": float(torch.tensor(plain_reduced[scale]).double().mean()
                                             - torch.tensor(plain_full).double().mean())})
    share, box = torch.stack(shares), torch.stack(boxes)
    report = {"command": " ".join(["python", *sys.argv]), "machine": machine(),
              "args": vars(args), "n_views": len(views), "k_channels": exact.shape[1],
              "weight_mean": float(torch.sigmoid(exact).mean()),
              "weight_sd_within_view": float(torch.sigmoid(exact).std(dim=1).mean()),
              "scales": rows, "mask_share_above_0.1": float(share.mean()),
              "mask_box_share_above_0.1": float(box.mean()),
              "channels_with_box_below_quarter": float((box < 0.25).float().mean())}
    print(f"{len(views)} artifact views, K = {exact.shape[1]}; channel weights mean "
          f"{report['weight_mean']:.3f}, sd within a view {report['weight_sd_within_view']:.3f}")
    print("\n| score scale | logit correlation with full size | mean logit offset | "
          "mean abs weight change | plain view's logit offset |")
    print("|---|---|---|---|---|")
    for row in rows:
        print(f"| {row['score_scale']:g}x | {row['logit_correlation']:.3f} | "
              f"{row['mean_logit_offset']:+.2f} | {row['mean_abs_weight_change']:.3f} | "
              f"{row['plain_view_logit_offset']:+.2f} |")
    print(f"\nmask above 0.1 of its range: {report['mask_share_above_0.1']:.2f} of the view; its "
          f"bounding box {report['mask_box_share_above_0.1']:.2f} of the view; channels whose box "
          f"is under a quarter of the view: {report['channels_with_box_below_quarter']:.2f}")
    atomic_write_text(Path(args.json), json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    run_main(main)

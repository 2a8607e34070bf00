"""``torchrun --nproc_per_node N -m napari_artseg.training.torchrun``: multi-GPU training.

Takes the options of ``artseg train`` (``--images``, ``--labels``, ``--out``,
``--preset``, ``--set`` ...). Initialises the process group from torchrun's
environment (NCCL on GPU ``LOCAL_RANK`` when CUDA is available, gloo on the CPU)
and runs the ordinary training pipeline on every rank; the training code splits
the work (:mod:`napari_artseg.training.ddp`). Rank 0 alone prints progress and
writes the model folder; the other ranks wait for it.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

import torch
import torch.distributed as dist


def init_from_environment(cpu: bool = False) -> torch.device:
    """Initialise the process group from ``torchrun``'s environment; return this rank's device.

    NCCL with GPU ``LOCAL_RANK`` when CUDA is available (and ``cpu`` is false),
    gloo on the CPU otherwise (each rank then uses its share of the cores).
    """
    if torch.cuda.is_available() and not cpu:
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        dist.init_process_group("nccl")
        return torch.device("cuda", local)
    dist.init_process_group("gloo")
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // dist.get_world_size()))
    return torch.device("cpu")


def main(argv: Sequence[str] | None = None) -> int:
    """``torchrun ... -m napari_artseg.training.torchrun`` with the options of ``artseg train``."""
    from pathlib import Path

    from ..cli import train_cmd
    from ..cli.progress import run_with_progress
    from ..errors import ArtSegError
    from . import train_pipeline
    from .ddp import world

    parser = argparse.ArgumentParser(prog="torchrun ... -m napari_artseg.training.torchrun")
    train_cmd.add_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["train", *(sys.argv[1:] if argv is None else argv)])
    device = init_from_environment(cpu=args.device == "cpu")
    rank = world()[0]
    try:
        if args.project or not (args.images and args.labels and args.out):
            raise ArtSegError("give --images, --labels and --out (--project is not supported)")
        config = train_cmd.build_config(args)
        config = config.replace(device=device.type)
        out = Path(args.out)
        if rank == 0:
            from ..atomic import remove_stale_temporaries

            remove_stale_temporaries(out.parent)
        dist.barrier()
        labels = train_cmd.existing_labels(Path(args.images), Path(args.labels))
        generator = train_pipeline(Path(args.images), labels, out, config,
                                   masks_dir=args.masks, init=args.init)
        folder = run_with_progress(generator, quiet=args.quiet or rank != 0)
        dist.barrier()
        if rank == 0:
            print(f"model written to {folder} by {dist.get_world_size()} processes")
        return 0
    except ArtSegError as exc:
        print(f"artseg train (rank {rank}): error: {exc}", file=sys.stderr)
        return 2
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

"""``torchrun --nproc_per_node N -m napari_artseg.training.torchrun``: multi-GPU training.

Takes the options of ``artseg train`` (``--images``, ``--labels``, ``--out``,
or ``--project``; ``--preset``, ``--set`` ...). Initialises the process group from torchrun's
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
from pathlib import Path
from typing import Any, NoReturn

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


def resolve_inputs(args: argparse.Namespace, config) -> Any:
    """What ``artseg train`` would train on (:func:`~napari_artseg.cli.train_cmd.resolve_inputs`).

    A new model folder in a project is named by rank 0 and the name sent to
    every rank. A project with curated masks and no ``--masks`` is refused:
    ``artseg train --project`` then runs the retrain that compares models on
    held-out masks, which runs in one process. Call on every rank (the folder
    name is a collective).

    Raises
    ------
    ArtSegError
        As ``artseg train``, and for the retrain case.
    """
    from ..cli import train_cmd
    from ..errors import ArtSegError
    from .ddp import broadcast

    inputs = train_cmd.resolve_inputs(
        args, config, folder_name=lambda method: broadcast(train_cmd.model_folder_name(method)))
    if inputs.retrain:
        project = inputs.project
        raise ArtSegError(f"{project.folder}: has curated masks; the retrain that compares "
                          "models on held-out masks runs in one process (artseg train "
                          f"--project); under torchrun add --masks {project.masks_dir} to "
                          "train on all of them")
    return inputs


def main(argv: Sequence[str] | None = None) -> int:
    """``torchrun ... -m napari_artseg.training.torchrun`` with the options of ``artseg train``.

    After a successful run every rank has passed the final barrier and the
    process group is left as it is: run as a module, the rank then exits through
    :func:`leave`, without gloo's teardown (which aborted a rank now and then with
    "terminate called without an active exception", after the model was written).
    After an error the group is destroyed here.
    """
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
    done = False
    try:
        config = train_cmd.build_config(args)
        config = config.replace(device=device.type)
        inputs = resolve_inputs(args, config)
        if inputs.out.exists():  # on every rank, before rank 0 can start writing
            raise ArtSegError(f"{inputs.out}: already exists; choose a new model folder")
        if rank == 0:
            from ..atomic import remove_stale_temporaries

            remove_stale_temporaries(inputs.out.parent)
        dist.barrier()
        generator = train_pipeline(inputs.images, inputs.labels, inputs.out, config,
                                   masks_dir=inputs.masks, init=args.init)
        folder = run_with_progress(generator, quiet=args.quiet or rank != 0)
        dist.barrier()
        if rank == 0:
            print(f"model written to {folder} by {dist.get_world_size()} processes")
            if inputs.project is not None:
                inputs.project.set_current_model(folder)
                print(f"{Path(folder).name} is now the project's current model")
        done = True
        return 0
    except ArtSegError as exc:
        print(f"artseg train (rank {rank}): error: {exc}", file=sys.stderr)
        return 2
    finally:
        if not done:
            dist.destroy_process_group()


def leave(code: int) -> NoReturn:
    """Flush the output and end the process with ``code`` without the interpreter's teardown.

    Everything a run writes is on disk (atomically) before :func:`main` returns.
    """
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":  # pragma: no cover
    leave(main())

"""Training under a distributed launcher (`torchrun --nproc_per_node N`, `accelerate launch`): who does what.

Every process (rank) trains: the trainer wraps the model in DistributedDataParallel and gives each rank its slice of
every batch, so all ranks must take part in every collective step (training, evaluation). What happens once per run
is rank 0's alone: the checkpoint folder's clean-up, the MLflow run, the model bundle, the metrics file. The other
ranks then wait at a barrier, so the launcher sees the group finish together, and exit 0. A single process (no
launcher) is rank 0 of a world of one, and every helper here is then a no-op.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def world_size() -> int:
    """Processes training together, on every machine (1 without a launcher)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def local_processes() -> int:
    """Processes the launcher started on this machine (1 without a launcher)."""
    return int(os.environ.get("LOCAL_WORLD_SIZE", "1"))


def cpu_threads_per_process(configured: int) -> int:
    """torch's intra-op threads for this rank: `model.cpu_threads`, or with 0 ("all cores") the cores divided among
    the ranks of this machine, since N ranks each using every core would fight over them."""
    if configured > 0:
        return configured
    processes = local_processes()
    return max(1, (os.cpu_count() or 1) // processes) if processes > 1 else 0


def set_threads(configured: int) -> None:
    """This rank's torch threads. Under a launcher also $OMP_NUM_THREADS: accelerate, on joining a CPU process
    group, sets its own thread count when that variable is unset, which would undo ours."""
    from leadre.runtime import set_cpu_threads

    threads = cpu_threads_per_process(configured)
    set_cpu_threads(threads)
    if threads > 0 and local_processes() > 1:
        os.environ["OMP_NUM_THREADS"] = str(threads)


def start() -> None:
    """Join the launcher's process group (gloo on CPU, NCCL on GPU: accelerate's choice), before any barrier.

    Replicas log warnings only: rank 0 tells the story, N copies of every line would bury it.
    """
    import torch
    from accelerate import PartialState

    state = PartialState(cpu=not torch.cuda.is_available())
    if not state.is_main_process:
        logging.getLogger().setLevel(logging.WARNING)
        logging.getLogger("leadre").setLevel(logging.WARNING)


def is_main_process() -> bool:
    from accelerate import PartialState

    return PartialState().is_main_process


def wait_for_everyone() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def from_main_process(build: Callable[[], T]) -> T:
    """`build()` on rank 0, its result sent to every rank: for what must be identical everywhere but is not
    guaranteed to come out identical if each rank built it (a tokenizer trained on the corpus)."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return build()
    box = [build() if dist.get_rank() == 0 else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def finish() -> None:
    """The end of a step: every rank waits until rank 0 has written everything; then the replicas leave (exit 0),
    so the step's summary (the CLI's last line, the return value) comes from rank 0 alone, as from one process."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return
    dist.barrier()
    main = dist.get_rank() == 0
    dist.destroy_process_group()  # torch warns at exit about a group that was never destroyed
    if not main:
        raise SystemExit(0)

"""Trainer checkpoints that a kill cannot leave half-usable: a completeness marker, written last, and `--resume`
that only trusts checkpoints carrying it.

The trainer writes `checkpoint-N/` file by file (weights, tokenizer, optimizer, RNG, trainer state). A kill during
that leaves a folder with the newest step number and missing or truncated files; resuming from it fails (the tokenizer
or the weights cannot be read) although the previous checkpoint is intact. So once the trainer has finished a
checkpoint, `MarkCheckpointComplete` flushes its files to disk and then writes the marker; `prepare_checkpoints`
resumes from the newest marked checkpoint and removes any newer, unmarked folder (the resumed run writes it again).
"""

from __future__ import annotations

import logging
import os
import re
import shutil
from pathlib import Path

from transformers import TrainerCallback
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from leadre.io import write_json

log = logging.getLogger(__name__)

COMPLETE_MARKER = "leadre_checkpoint_complete.json"
_CHECKPOINT = re.compile(rf"^{PREFIX_CHECKPOINT_DIR}-(\d+)$")


def _fsync_tree(folder: Path) -> None:
    """Flush every file of `folder` and the folder entries themselves, so the marker never outlives its data."""
    for path in [*folder.rglob("*"), folder]:
        descriptor = os.open(path, os.O_RDONLY)
        try:
            os.fsync(descriptor)
        finally:
            os.close(descriptor)


class MarkCheckpointComplete(TrainerCallback):
    """After each save (the trainer calls `on_save` once the checkpoint folder is written), mark it complete."""

    def on_save(self, args, state, control, **kwargs):
        from accelerate import PartialState

        # sharded runs (FSDP, DeepSpeed) write a checkpoint from every process: mark it once all have finished
        PartialState().wait_for_everyone()
        if args.should_save:
            folder = Path(args.output_dir) / f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}"
            _fsync_tree(folder)
            write_json(folder / COMPLETE_MARKER, {"global_step": state.global_step})
        return control


def _step(folder: Path) -> int:
    return int(_CHECKPOINT.match(folder.name).group(1))


def checkpoint_folders(folder: Path) -> list[Path]:
    """The `checkpoint-N` folders in `folder`, oldest step first."""
    if not folder.is_dir():
        return []
    return sorted((p for p in folder.iterdir() if p.is_dir() and _CHECKPOINT.match(p.name)), key=_step)


def is_complete(checkpoint: Path) -> bool:
    return (checkpoint / COMPLETE_MARKER).is_file()


def newest_complete_checkpoint(folder: Path) -> Path | None:
    """The newest checkpoint whose save finished (read-only: what every rank resumes from)."""
    return next((c for c in reversed(checkpoint_folders(folder)) if is_complete(c)), None)


def last_complete_checkpoint(folder: Path) -> Path | None:
    """The newest checkpoint whose save finished; newer, incomplete ones are removed with a warning."""
    for checkpoint in reversed(checkpoint_folders(folder)):
        if is_complete(checkpoint):
            return checkpoint
        log.warning("--resume: %s is incomplete (no %s: the run stopped while saving it); removing it and trying "
                    "the previous checkpoint", checkpoint, COMPLETE_MARKER)
        shutil.rmtree(checkpoint)
    return None


def prepare_checkpoints(folder: Path, resume: bool) -> str | None:
    """The checkpoint to resume from, or None; a fresh run starts from an empty folder so no stale state leaks in.

    Under a launcher only rank 0 removes folders (N ranks deleting the same tree race each other); the others wait
    for it and then find the same checkpoint.
    """
    from leadre.train import processes

    if processes.is_main_process():
        if resume:
            found = last_complete_checkpoint(folder)
            if found is None:
                log.warning("--resume: no complete checkpoint in %s, starting from the beginning", folder)
            else:
                log.info("resuming from %s", found)
        else:
            shutil.rmtree(folder, ignore_errors=True)
    processes.wait_for_everyone()
    found = newest_complete_checkpoint(folder) if resume else None
    return str(found) if found is not None else None

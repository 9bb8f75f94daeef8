"""Training progress as log lines a person reads, and library noise silenced where it starts.

The trainer's own reporting is made for a terminal: tqdm bars redrawn with carriage returns and every logged dict
printed raw (`{'loss': '6.502', 'grad_norm': ...}`, hundreds per run). In a log file, `kubectl logs` or an Airflow
task log that is unreadable. So outside a terminal the bars are off and the logging steps become one line every
`LINE_EVERY_SECONDS` (leadre/runtime.py) or so (the first step, each evaluation and the end always get theirs):

    sft step 120/6278 loss 2.31 lr 2.9e-03 14.8k tok/s eta 9m

`logging_steps` still sets what MLflow records; the default's 10 steps come every ~1.3 s on 2 CPU cores, a line
each made the SFT step alone 41 kB of `make run`'s log.

In a terminal the trainer's bar stays (it is useful there) and the same lines are written above it.
"""

from __future__ import annotations

import logging
import time
import warnings
from typing import Any

from transformers import TrainerCallback
from transformers.trainer_callback import PrinterCallback, ProgressCallback

from leadre.runtime import LINE_EVERY_SECONDS, interactive

log = logging.getLogger("leadre.train")


def quiet_libraries() -> None:
    """Warnings that say nothing about this run, filtered by message so any other warning still shows.

    - `is_gradient_checkpointing` FutureWarning: TRL 1.16 reads the attribute transformers 5.24 renamed
      (`is_activation_checkpointing`); both pinned, the value read is the same.
    - Outside a terminal, the progress bars of datasets' `map` (tokenising, each rank) and of transformers' weight
      loading: carriage-return redraws that fill a log file with one line per update.
    """
    warnings.filterwarnings("ignore", message=r"`is_gradient_checkpointing` is deprecated", category=FutureWarning)
    if not interactive():
        import datasets
        from transformers.utils import logging as hf_logging

        datasets.disable_progress_bars()
        hf_logging.disable_progress_bar()


class _TiedHeadReload(logging.Filter):
    """Drops the trainer's "missing keys ... ['lm_head.weight']" when it reloads the best checkpoint of a model
    whose head is tied to its input embeddings: the head is the embedding matrix, which safetensors stores once
    (under the embedding's name) and which was loaded; nothing is missing."""

    MESSAGE = "There were missing keys in the checkpoint model loaded: ['lm_head.weight']."

    def filter(self, record: logging.LogRecord) -> bool:
        return record.getMessage() != self.MESSAGE


def quiet_tied_head_reload() -> None:
    """Call for tied models only: for an untied one a missing head is a real fault and must stay visible."""
    trainer_log = logging.getLogger("transformers.trainer")
    if not any(isinstance(f, _TiedHeadReload) for f in trainer_log.filters):
        trainer_log.addFilter(_TiedHeadReload())


def _si(value: float) -> str:
    return f"{value / 1000:.1f}k" if value >= 1000 else f"{value:.0f}"


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f}s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f}m"
    return f"{seconds / 3600:.1f}h"


class ProgressLines(TrainerCallback):
    """Lines for the logging steps (one every `every_seconds` at most), each evaluation and the end of training, from
    the main process only."""

    def __init__(self, step: str, every_seconds: float = LINE_EVERY_SECONDS, clock=time.perf_counter) -> None:
        self.step, self.every, self.clock = step, every_seconds, clock
        self.started = 0.0
        self.first_step = 0
        self.last = (0.0, 0)  # (time, tokens seen) at the previous step line
        self.wrote_step = False

    def on_train_begin(self, args, state, control, **kwargs):
        self.started = self.clock()
        self.first_step = state.global_step  # a resumed run's rate counts only the steps it ran
        self.last = (self.started, state.num_input_tokens_seen or 0)
        self.wrote_step = False

    def line(self, state, logs: dict[str, Any]) -> str | None:
        now = self.clock()
        if "train_loss" in logs:  # the summary at the end (step logs carry `loss` and a running train_runtime)
            return (f"{self.step} trained {state.global_step} steps in {_duration(logs['train_runtime'])}: "
                    f"train_loss {logs['train_loss']:.4g}")
        if "eval_loss" in logs:
            return f"{self.step} eval at step {state.global_step}: eval_loss {logs['eval_loss']:.4g}"
        if "loss" not in logs:
            return None
        then, tokens_then = self.last
        if self.wrote_step and now - then < self.every:
            return None
        self.wrote_step = True
        parts = [f"{self.step} step {state.global_step}/{state.max_steps}", f"loss {logs['loss']:.4g}"]
        if "learning_rate" in logs:
            parts.append(f"lr {logs['learning_rate']:.1e}")
        tokens = state.num_input_tokens_seen or 0
        if tokens and now > then:
            parts.append(f"{_si((tokens - tokens_then) / (now - then))} tok/s")
        done = state.global_step - self.first_step
        if done > 0:
            parts.append(f"eta {_duration((now - self.started) / done * (state.max_steps - state.global_step))}")
        self.last = (now, tokens)
        return " ".join(parts)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if state.is_world_process_zero and logs:
            text = self.line(state, logs)
            if text:
                log.info(text)


class _BarOnly(ProgressCallback):
    """The trainer's terminal bar without its raw dict lines (ProgressLines writes those)."""

    def on_log(self, args, state, control, logs=None, **kwargs):
        return control


def readable_progress(trainer, step: str) -> None:
    """Swap the trainer's dict printing for ProgressLines (and keep the bar only in a terminal)."""
    trainer.remove_callback(PrinterCallback)
    if trainer.pop_callback(ProgressCallback) is not None and interactive():
        trainer.add_callback(_BarOnly)
    trainer.add_callback(ProgressLines(step))

"""Process-wide runtime settings every torch-using step applies the same way (training, evaluation, generation,
near-line), and how a long step reports progress (a bar at a terminal, log lines elsewhere). Light on purpose:
torch and tqdm are imported only when used."""

from __future__ import annotations


def set_cpu_threads(threads: int) -> None:
    """torch's intra-op threads for CPU work (0 leaves torch's default); no effect on GPU kernels."""
    import torch

    if threads > 0 and not torch.cuda.is_available():
        torch.set_num_threads(threads)


def interactive() -> bool:
    """Progress bars only for a person at a terminal; everything else (files, pipes, pods) gets lines."""
    import sys

    return sys.stderr.isatty()


def quiet_library_bars() -> None:
    """Outside a terminal, the libraries' own bars (Hugging Face: loading weights, downloads, datasets' `map`;
    MLflow: artifact downloads) are off, as ours are: a log file keeps their carriage-return redraws as one garbled
    line. Hugging Face reads its variables when first imported, so call this first (the CLI does); a variable the
    user set wins."""
    import os

    if not interactive():
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
        os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
        os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")


# Progress outside a terminal: a line every 10 s reads as alive without filling the log (training uses it too).
LINE_EVERY_SECONDS = 10.0


class _ProgressLines:
    """tqdm's `update` for logs: one line every `every_seconds` with the count, the rate and the time left,
    instead of a bar redrawn with carriage returns that a file keeps as one endless line."""

    def __init__(self, total: int, desc: str, unit: str, every_seconds: float, clock=None):
        import logging
        import time

        self.total, self.desc, self.unit, self.every = total, desc, unit, every_seconds
        self.done, self._clock, self._log = 0, clock or time.perf_counter, logging.getLogger("leadre.progress")
        self.first: tuple[float, int] | None = None  # (time, count) at the first update
        self.last = 0.0  # time of the last line

    def update(self, n: int = 1) -> None:
        self.done += n
        now = self._clock()
        if self.first is None:  # rates count from the first update: loading and warm-up are not throughput
            self.first, self.last = (now, self.done), now
            if self.done < self.total:
                return
        if now - self.last >= self.every or self.done >= self.total:
            self.last = now
            since, before = self.first
            line = f"{self.desc}: {self.done}/{self.total} {self.unit}s ({100 * self.done / max(self.total, 1):.0f}%)"
            if now > since and self.done > before:
                rate = (self.done - before) / (now - since)
                line += f", {rate:.1f} {self.unit}s/s, {(self.total - self.done) / rate:.0f} s left"
            self._log.info("%s", line)

    def __enter__(self) -> _ProgressLines:
        return self

    def __exit__(self, *exc) -> None:
        return None


def progress(total: int, desc: str, unit: str = "it", enabled: bool = True, every_seconds: float = LINE_EVERY_SECONDS,
             clock=None):
    """A tqdm bar at a terminal, a log line every `every_seconds` elsewhere; a silent one when not `enabled`."""
    if interactive() or not enabled:
        from tqdm.auto import tqdm

        return tqdm(total=total, desc=desc, unit=unit, disable=not enabled)
    return _ProgressLines(total, desc, unit, every_seconds, clock)

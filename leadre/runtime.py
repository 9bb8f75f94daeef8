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


class _ProgressLines:
    """tqdm's `update` for logs: one line every `every_seconds` with the count, the rate and the time left,
    instead of a bar redrawn with carriage returns that a file keeps as one endless line."""

    def __init__(self, total: int, desc: str, unit: str, every_seconds: float, clock=None):
        import logging
        import time

        self.total, self.desc, self.unit, self.every = total, desc, unit, every_seconds
        self.done, self._clock, self._log = 0, clock or time.perf_counter, logging.getLogger("leadre.progress")
        self.started = self.last = self._clock()

    def update(self, n: int = 1) -> None:
        self.done += n
        now = self._clock()
        if now - self.last >= self.every or self.done >= self.total:
            self.last = now
            rate = self.done / max(now - self.started, 1e-9)
            left = (self.total - self.done) / max(rate, 1e-9)
            self._log.info("%s: %d/%d %ss (%.0f%%), %.1f %ss/s, %.0f s left", self.desc, self.done, self.total,
                           self.unit, 100 * self.done / max(self.total, 1), rate, self.unit, left)

    def __enter__(self) -> _ProgressLines:
        return self

    def __exit__(self, *exc) -> None:
        return None


def progress(total: int, desc: str, unit: str = "it", enabled: bool = True, every_seconds: float = 10.0, clock=None):
    """A tqdm bar at a terminal, a log line every `every_seconds` elsewhere; a silent one when not `enabled`."""
    if interactive() or not enabled:
        from tqdm.auto import tqdm

        return tqdm(total=total, desc=desc, unit=unit, disable=not enabled)
    return _ProgressLines(total, desc, unit, every_seconds, clock)

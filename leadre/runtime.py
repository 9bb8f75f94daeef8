"""Process-wide runtime settings every torch-using step applies the same way (training, evaluation, generation,
near-line). Light on purpose: torch is imported only when a setting is applied."""

from __future__ import annotations


def set_cpu_threads(threads: int) -> None:
    """torch's intra-op threads for CPU work (0 leaves torch's default); no effect on GPU kernels."""
    import torch

    if threads > 0 and not torch.cuda.is_available():
        torch.set_num_threads(threads)

"""Benchmarks: `python -m bench` (or `make bench`). Targets live here, never in timed unit tests."""

from __future__ import annotations

import json
import time
from pathlib import Path


def save_results(kind: str, payload) -> Path:
    """Keep a run's raw figures as bench/results/<kind>-<time>.json (git-ignored) and return the path."""
    out = Path(__file__).parent / "results" / f"{kind}-{time.strftime('%Y%m%dT%H%M%S')}.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(payload, indent=2))
    return out

"""Offline evaluation: ranking metrics and the conventional ID-based baselines the LLM recommender is compared with."""

from pathlib import Path
from typing import Any

# The model a retrain proposes, as the evaluation and the gate name it (beside baselines, SFT and the champion).
CANDIDATE = "candidate"

# What `leadre evaluate` writes into evaluate.reports_dir. summary.json is the result (a DVC output: the same bytes
# for the same models, data and params); run.json is the run that produced it (its MLflow run, provenance, seconds),
# which changes every time and so stays out of what DVC hashes, as report.html and the PNGs do.
SUMMARY = "summary.json"
RUN_RECORD = "run.json"


def evaluation_run(reports_dir: Path) -> dict[str, Any]:
    """The last evaluation's run record (`run_id`, `provenance`, `seconds`); {} when there is none."""
    from leadre.io import read_json

    path = Path(reports_dir) / RUN_RECORD
    return read_json(path) if path.is_file() else {}

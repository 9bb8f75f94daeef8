"""The retrain's steps by name: the one table the CLI, DVC (through the CLI) and the Airflow DAG all run from.

Each entry names the function that does the work (`module:function`, imported only when the step runs, so the
DAG file can import this module at parse time). Every function takes a `Params` and returns a JSON-able summary;
the gate's summary carries `passed`, which decides whether promotion runs.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

STEP_FUNCTIONS: Mapping[str, str] = {
    "validate": "leadre.data.validate:run_validate",
    "sids": "leadre.sids.build:run_build_sids",
    "prompts": "leadre.prompts.build:run_build_prompts",
    "sft": "leadre.train.sft:run_sft",
    "dpo": "leadre.train.dpo:run_dpo",
    "evaluate": "leadre.evaluate.run:run_evaluate",
    "gate": "leadre.evaluate.gate:run_gate",
    "promote": "leadre.registry.promote:run_promote",
    "nearline": "leadre.serve.nearline:run_nearline",
}
RETRAIN_ORDER: tuple[str, ...] = tuple(STEP_FUNCTIONS)


def step_function(name: str):
    if name not in STEP_FUNCTIONS:
        raise KeyError(f"unknown step {name!r}; steps are {', '.join(STEP_FUNCTIONS)}")
    module, function = STEP_FUNCTIONS[name].split(":")
    return getattr(importlib.import_module(module), function)


def run_step(name: str, params_file: Path | str | None = None, overrides: Mapping[str, Any] | None = None) -> Any:
    """Load params (file + dotted overrides, as `leadre -S`) and run one step; returns the step's summary."""
    from leadre.config import load_params

    return step_function(name)(load_params(params_file, dict(overrides or {})))

"""Run the retrain in one process, in the order of `leadre.steps.STEPS`: no DVC, no Airflow (see README.md here)."""

from __future__ import annotations

import argparse
import json
import logging
import sys

from leadre.config import load_params, parse_overrides
from leadre.errors import LeadreError, one_line
from leadre.steps import STEPS, run_step, step_function

# steps that write to the model registry: `--no-register` runs them without (leadre/registry/models.py registry_hold)
REGISTRY_STEPS = ("gate", "promote")


def main() -> int:
    """Exit status as the CLI's: 0, 1 for a `UserError` (fix the input), 75 for a `TransientError` (try again)."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--params", help="params file (default: ./params.yaml or $LEADRE_PARAMS)")
    parser.add_argument("-S", "--set", dest="overrides", action="append", default=[], help="KEY=VALUE override")
    parser.add_argument("--no-register", action="store_true",
                        help="evaluate and gate, but register no version and move no alias (an ablation, a try-out)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    skipped: set[str] = set()
    step = "params"
    try:
        overrides = parse_overrides(args.overrides)
        for step in STEPS:
            if step in skipped:
                print(f"{step}: skipped (the gate did not pass; the champion stays)")
                continue
            if args.no_register and step in REGISTRY_STEPS:
                summary = step_function(step)(load_params(args.params, overrides), register=False)
            else:
                summary = run_step(step, args.params, overrides)
            print(f"{step}: {json.dumps(summary, default=str)[:300]}")
            if step == "gate" and not summary["passed"]:
                skipped.add("promote")
    except LeadreError as err:  # raised on purpose: one line says what to fix; anything else keeps its traceback
        print(f"error: {step}: {one_line(str(err))}", file=sys.stderr)
        return err.exit_code
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Run the retrain in one process, in the order of `leadre.steps.STEPS`: no DVC, no Airflow (see README.md here)."""

from __future__ import annotations

import argparse
import json
import logging

from leadre.config import parse_overrides
from leadre.steps import STEPS, run_step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--params", help="params file (default: ./params.yaml or $LEADRE_PARAMS)")
    parser.add_argument("-S", "--set", dest="overrides", action="append", default=[], help="KEY=VALUE override")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    overrides = parse_overrides(args.overrides)
    skipped: set[str] = set()
    for step in STEPS:
        if step in skipped:
            print(f"{step}: skipped (the gate did not pass; the champion stays)")
            continue
        summary = run_step(step, args.params, overrides)
        print(f"{step}: {json.dumps(summary, default=str)[:300]}")
        if step == "gate" and not summary["passed"]:
            skipped.add("promote")


if __name__ == "__main__":
    main()

"""`leadre promote` and `leadre rollback`: move the `champion` alias, only ever to a version the gate passed.

What the gate decided is read from the registry (the challenger's tags), not from reports/gate.json: the file is a
report for people, editable by anyone with the workspace, and promotion must not be talked into a version.
"""

from __future__ import annotations

import logging
from typing import Any

from leadre.config import Params
from leadre.registry import models
from leadre.tracking import write_receipt

log = logging.getLogger(__name__)


def run_promote(params: Params, force: bool = False, register: bool = True) -> dict[str, Any]:
    """Point `champion` at the `challenger` version, if its gate passed; otherwise change nothing.

    A failed gate is a decision, not an error: the result says why the champion stays, and the step succeeds so a
    pipeline run reports it rather than crashing. A challenger that was rolled back is refused (an error) unless
    `force`: re-running a pipeline's promote after a rollback must not bring the version back. A run that must not
    touch the registry (`models.registry_hold`: an ablation, a DVC experiment, `register=False`) promotes nothing:
    its gate registered no challenger, and the one there is another run's.
    """
    result = _promote(params, force, register)
    write_receipt(params, "promote")
    return result


def _promote(params: Params, force: bool, register: bool) -> dict[str, Any]:
    hold = models.registry_hold(params, register)
    if hold is not None:
        champion = models.alias_version(params, models.CHAMPION)
        current = str(champion.version) if champion else None
        log.info("not promoting: %s; champion stays %s", hold, current)
        return {"promoted": False, "champion": current, "skipped": hold, "reasons": []}
    challenger = models.alias_version(params, models.CHALLENGER)
    if challenger is None:
        raise models.RegistryError(f"{params.registry.model_name} has no `challenger` version: run `leadre gate` "
                                   f"first")
    version = str(challenger.version)
    reasons = models.gate_reasons(challenger)
    if not models.gate_passed(challenger):
        champion = models.alias_version(params, models.CHAMPION)
        current = str(champion.version) if champion else None
        log.warning("gate did not pass for version %s (%s): champion stays %s", version, "; ".join(reasons), current)
        return {"promoted": False, "champion": current, "challenger": version, "reasons": reasons}
    previous = models.promote(params, version, force=force)
    return {"promoted": True, "champion": version, "previous": previous, "reasons": reasons}


def run_rollback(params: Params) -> dict[str, Any]:
    before, after = models.rollback(params)
    return {"rolled_back_from": before, "champion": after}

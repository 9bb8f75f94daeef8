"""`leadre promote` and `leadre rollback`: move the `champion` alias, only ever to a version the gate passed."""

from __future__ import annotations

import logging
from typing import Any

from leadre.config import Params
from leadre.io import read_json
from leadre.registry import models

log = logging.getLogger(__name__)


def run_promote(params: Params) -> dict[str, Any]:
    """Point `champion` at the challenger the last gate registered, if that gate passed; otherwise change nothing.

    A failed gate is a decision, not an error: the result says why the champion stays, and the step succeeds so a
    pipeline run reports it rather than crashing.
    """
    decision = read_json(params.path(params.gate.decision_file))
    version = decision.get("challenger_version")
    champion = models.alias_version(params, models.CHAMPION)
    current = str(champion.version) if champion else None
    if not decision["passed"]:
        log.warning("gate did not pass (%s): champion stays %s", "; ".join(decision["reasons"]), current)
        return {"promoted": False, "champion": current, "challenger": version, "reasons": decision["reasons"]}
    if version is None:
        raise models.RegistryError(f"{params.gate.decision_file}: the gate registered no challenger version "
                                   f"(run `leadre gate` first)")
    challenger = models.alias_version(params, models.CHALLENGER)
    if challenger is None or str(challenger.version) != str(version):
        raise models.RegistryError(f"the gate passed version {version} but `challenger` is now "
                                   f"{challenger.version if challenger else 'unset'}: re-run `leadre gate`")
    previous = models.promote(params, version)
    return {"promoted": True, "champion": version, "previous": previous, "reasons": decision["reasons"]}


def run_rollback(params: Params) -> dict[str, Any]:
    before, after = models.rollback(params)
    return {"rolled_back_from": before, "champion": after}

"""Registry operations: register a candidate (alias `challenger`), promote it (alias `champion`), roll back.

Aliases, not the deprecated stages. Moving an alias is a single registry write, so `champion` always names exactly
one complete version; the previous champion is remembered in the new version's tags, which is what rollback
follows. Whether a version may become champion is read from its own tags, never from a file in the workspace: the
gate's verdict (exactly as the gate wrote it) and whether it was ever rolled back.
"""

from __future__ import annotations

import logging
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from leadre.config import Params
from leadre.errors import UserError
from leadre.tracking import DVC_EXPERIMENT_ENV

log = logging.getLogger(__name__)

CHAMPION = "champion"
CHALLENGER = "challenger"
PREVIOUS_CHAMPION_TAG = "leadre.previous_champion"
PROMOTED_AT_TAG = "leadre.promoted_at"
GATE_PASSED_TAG = "leadre.gate_passed"  # str(bool) as the gate writes it: "True" or "False", nothing else counts
GATE_REASONS_TAG = "leadre.gate_reasons"  # the decision's reasons, a JSON list
ROLLED_BACK_TAG = "leadre.rolled_back"
ROLLED_BACK_AT_TAG = "leadre.rolled_back_at"
FORCED_PROMOTION_TAG = "leadre.forced_promotion"  # when a rolled-back version was promoted again on purpose


class RegistryError(UserError, RuntimeError):
    """A registry operation cannot be done as asked (no challenger, a failed gate, nothing to roll back to)."""


@dataclass(frozen=True)
class ChampionBundle:
    version: str
    folder: Path


def registry_hold(params: Params, register: bool = True) -> str | None:
    """Why this run must leave the registry alone (no new version, no alias moved), or None when it may write.

    Experiments compare; only a retrain of the full pipeline ships. A DVC experiment, or a model trained on prompts
    with a facet switched off (the feature ablation), is evaluated and gated like any candidate, but registering it
    would make it the challenger, and a passing gate would make it the champion.
    """
    if not register:
        return "--no-register"
    experiment = os.environ.get(DVC_EXPERIMENT_ENV)
    if experiment:
        return (f"a DVC experiment ({experiment}): experiments never register; to ship one, `dvc exp apply` it, "
                f"commit, and `dvc repro`")
    off = [facet for facet, shown in params.prompts.features.model_dump().items() if not shown]
    if off:
        return (f"a feature ablation ({', '.join(f'prompts.features.{facet}=false' for facet in off)}): a model "
                f"trained without a facet of the prompt never ships")
    return None


def _client(params: Params):
    from mlflow.tracking import MlflowClient

    from leadre.tracking import configure

    configure(params)
    return MlflowClient()


def alias_version(params: Params, alias: str):
    """The model version an alias points at, or None (no registered model yet, or alias unset)."""
    from mlflow.exceptions import MlflowException

    client = _client(params)
    try:
        return client.get_model_version_by_alias(params.registry.model_name, alias)
    except MlflowException:
        return None


def model_version(params: Params, version: str):
    from mlflow.exceptions import MlflowException

    try:
        return _client(params).get_model_version(params.registry.model_name, str(version))
    except MlflowException:
        raise RegistryError(f"{params.registry.model_name} has no version {version}") from None


def gate_passed(version) -> bool:
    """The gate's verdict on a model version, from its tag; a tag the gate did not write is an error, not a pass."""
    value = version.tags.get(GATE_PASSED_TAG)
    if value not in ("True", "False"):
        raise RegistryError(f"version {version.version} has {GATE_PASSED_TAG}={value!r}, not the 'True' or 'False' "
                            f"the gate writes: re-run `leadre gate`")
    return value == "True"


def gate_reasons(version) -> list[str]:
    import json

    try:
        reasons = json.loads(version.tags.get(GATE_REASONS_TAG, "[]"))
    except json.JSONDecodeError:
        reasons = None
    return [str(r) for r in reasons] if isinstance(reasons, list) else [f"unreadable {GATE_REASONS_TAG} tag"]


def download_bundle(params: Params, version: str, target: Path | None = None) -> Path:
    """A local copy of a version's bundle folder (weights, tokenizer, S-ID files)."""
    import mlflow
    from leadre.registry.pyfunc import BUNDLE_ARTIFACT

    _client(params)
    target = Path(target or tempfile.mkdtemp(prefix=f"leadre-v{version}-"))
    local = Path(mlflow.artifacts.download_artifacts(
        artifact_uri=f"models:/{params.registry.model_name}/{version}", dst_path=str(target)))
    # pyfunc keeps an artifact under its source folder's name; MLmodel maps the artifact key to that path
    spec = yaml.safe_load((local / "MLmodel").read_text(encoding="utf-8"))
    artifact = spec.get("flavors", {}).get("python_function", {}).get("artifacts", {}).get(BUNDLE_ARTIFACT, {})
    folder = local / artifact.get("path", f"artifacts/{BUNDLE_ARTIFACT}")
    if not folder.is_dir():
        raise RegistryError(f"version {version} of {params.registry.model_name} has no bundle artifact")
    return folder


def champion_bundle(params: Params) -> ChampionBundle | None:
    found = alias_version(params, CHAMPION)
    if found is None:
        return None
    return ChampionBundle(version=str(found.version), folder=download_bundle(params, str(found.version)))


def register_candidate(params: Params, bundle: Path, tags: dict[str, Any]) -> str:
    """Log `bundle` as a pyfunc model in the active run, register it, tag it and point `challenger` at it."""
    import leadre
    import mlflow
    from leadre.registry.pyfunc import BUNDLE_ARTIFACT, LeadreModel, signature

    info = mlflow.pyfunc.log_model(
        name="model", python_model=LeadreModel(), artifacts={BUNDLE_ARTIFACT: str(bundle)},
        code_paths=[str(Path(leadre.__file__).parent)], model_config=params.decode.model_dump(),
        signature=signature(),
        registered_model_name=params.registry.model_name, pip_requirements=_requirements())
    version = str(info.registered_model_version)
    client = _client(params)
    for key, value in tags.items():
        client.set_model_version_tag(params.registry.model_name, version, key, str(value))
    client.set_registered_model_alias(params.registry.model_name, CHALLENGER, version)
    return version


def promote(params: Params, version: str, force: bool = False) -> str | None:
    """Point `champion` at `version`; returns the version it pointed at before (None if there was none).

    Only a version whose gate passed; a version once rolled back only with `force` (logged, and tagged on it), so
    a retried pipeline cannot undo a rollback.
    """
    from datetime import datetime, timezone

    client = _client(params)
    name = params.registry.model_name
    found = model_version(params, version)
    if not gate_passed(found):
        raise RegistryError(f"version {version} did not pass the gate ({'; '.join(gate_reasons(found))}): "
                            f"it cannot become champion")
    previous = alias_version(params, CHAMPION)
    if previous is not None and str(previous.version) == str(version):
        return str(previous.version)
    now = datetime.now(timezone.utc).isoformat()
    if ROLLED_BACK_TAG in found.tags:
        when = found.tags.get(ROLLED_BACK_AT_TAG, "earlier")
        if not force:
            raise RegistryError(f"version {version} was rolled back ({when}): it becomes champion again only when "
                                f"forced (`leadre promote --force`)")
        log.warning("promoting version %s although it was rolled back (%s): forced", version, when)
        client.set_model_version_tag(name, version, FORCED_PROMOTION_TAG, now)
    if previous is not None:
        client.set_model_version_tag(name, version, PREVIOUS_CHAMPION_TAG, str(previous.version))
    client.set_model_version_tag(name, version, PROMOTED_AT_TAG, now)
    client.set_registered_model_alias(name, CHAMPION, version)
    return str(previous.version) if previous else None


def rollback(params: Params) -> tuple[str, str]:
    """Re-point `champion` at the version it replaced and mark the one it leaves as rolled back; returns (from, to)."""
    from datetime import datetime, timezone

    current = alias_version(params, CHAMPION)
    if current is None:
        raise RegistryError(f"{params.registry.model_name} has no champion to roll back")
    previous = current.tags.get(PREVIOUS_CHAMPION_TAG)
    if not previous:
        raise RegistryError(f"champion version {current.version} replaced no earlier version: nothing to roll back to")
    client = _client(params)
    name = params.registry.model_name
    # marked before the alias moves: a crash in between leaves a marked champion, never an unmarked rolled-back one
    client.set_model_version_tag(name, current.version, ROLLED_BACK_AT_TAG, datetime.now(timezone.utc).isoformat())
    client.set_model_version_tag(name, current.version, ROLLED_BACK_TAG, "true")
    client.set_registered_model_alias(name, CHAMPION, previous)
    return str(current.version), previous


def _requirements() -> list[str]:
    """The serving libraries at the versions installed here (explicit: MLflow's inference adds torchvision)."""
    from importlib.metadata import version

    return [f"{name}=={version(name)}" for name in ("torch", "transformers", "pandas", "pyarrow", "numpy", "pydantic",
                                                      "pyyaml", "mlflow")]

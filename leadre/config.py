"""Typed view of params.yaml: the one home of configuration.

Every step takes a `Params`; nothing reads the YAML on its own. Unknown keys and wrong types are errors that name
the key, so a typo never silently falls back to a default.
"""

from __future__ import annotations

import os
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

PARAMS_ENV = "LEADRE_PARAMS"
DEFAULT_PARAMS_FILE = "params.yaml"


class ConfigError(ValueError):
    """params.yaml (or an override) is missing, malformed or names an unknown key."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DataParams(_Section):
    snapshot_time: datetime
    generated_dir: Path
    imported_dir: Path
    source_dir: Path
    validated_dir: Path

    @field_validator("snapshot_time")
    @classmethod
    def _aware(cls, value: datetime) -> datetime:
        if value.tzinfo is None:
            raise ValueError("must carry a UTC offset, e.g. 2026-11-01T00:00:00+00:00")
        return value


class WorldScale(_Section):
    users: int = Field(gt=0)
    ads: int = Field(gt=0)
    contents: int = Field(gt=0)
    queries: int = Field(gt=0)


class DomainMix(_Section):
    content: float = Field(ge=0)
    ad: float = Field(gt=0)
    search: float = Field(ge=0)

    @model_validator(mode="after")
    def _sums_to_one(self) -> DomainMix:
        total = self.content + self.ad + self.search
        if abs(total - 1.0) > 1e-6:
            raise ValueError(f"shares must sum to 1 (they sum to {total:g})")
        return self


class WorldParams(_Section):
    seed: int
    scale: str
    scales: dict[str, WorldScale]
    history_days: int = Field(gt=0)
    events_per_user_mean: float = Field(gt=0)
    events_per_user_dispersion: float = Field(gt=0)
    min_events_per_user: int = Field(ge=1)
    intents_per_user_max: int = Field(ge=1)
    intent_drift_share: float = Field(ge=0, le=1)
    off_intent_rate: float = Field(ge=0, le=1)
    content_follows_intent: float = Field(ge=0, le=1)
    domain_mix: DomainMix
    conversion_rate: float = Field(ge=0, le=1)
    conversion_delay_hours: float = Field(gt=0)
    new_ad_share: float = Field(ge=0, le=1)
    ad_lifetime_days_median: float = Field(gt=0)
    paused_share: float = Field(ge=0, lt=1)
    popularity_sigma: float = Field(ge=0)
    ecpm_popularity_exponent: float = Field(ge=0)

    @model_validator(mode="after")
    def _known_scale(self) -> WorldParams:
        if self.scale not in self.scales:
            raise ValueError(f"scale {self.scale!r} is not one of {sorted(self.scales)}")
        return self

    @property
    def size(self) -> WorldScale:
        return self.scales[self.scale]


class ValidationParams(_Section):
    reports_dir: Path
    metrics_file: Path
    examples_per_rule: int = Field(ge=1, le=100)
    data_docs: bool


class RqVaeParams(_Section):
    latent_dim: int = Field(gt=0)
    hidden_dim: int = Field(gt=0)
    epochs: int = Field(gt=0)
    learning_rate: float = Field(gt=0)
    commitment: float = Field(ge=0)
    batch_size: int = Field(gt=0)


class SidsParams(_Section):
    encoder: str
    batch_size: int = Field(gt=0)
    method: Literal["rq_kmeans", "rq_vae"]
    levels: int = Field(ge=1, le=8)
    codebook_size: int = Field(ge=2)
    max_collisions: int = Field(ge=1)
    kmeans_iterations: int = Field(ge=1)
    rqvae: RqVaeParams
    seed: int
    out_dir: Path
    embeddings_cache: Path


class AuxRatio(_Section):
    ad_to_sid: float = Field(ge=0)
    sid_to_text: float = Field(ge=0)
    titles_prompt: float = Field(ge=0)


class PromptParams(_Section):
    out_dir: Path
    holdout_days: int = Field(gt=0)
    horizon_days: int = Field(gt=0)
    max_train_cutoffs_per_user: int = Field(ge=1)
    min_history_events: int = Field(ge=1)
    short_term_events: int = Field(ge=1)
    long_term_days: int = Field(gt=0)
    long_term_top: int = Field(ge=1)
    max_prompt_tokens: int = Field(ge=64)
    token_counter: str
    users_per_chunk: int = Field(gt=0)
    workers: int = Field(ge=1)
    aux_ratio: AuxRatio
    dpo_same_intent_rejected: float = Field(ge=0, le=1)
    seed: int


class Params(_Section):
    data: DataParams
    world: WorldParams
    validation: ValidationParams
    sids: SidsParams
    prompts: PromptParams
    root: Path = Field(default=Path("."), exclude=True)

    def path(self, relative: Path | str) -> Path:
        """Resolve a params path against the folder params.yaml lives in, as DVC does."""
        relative = Path(relative)
        return relative if relative.is_absolute() else self.root / relative


def _set_dotted(tree: dict[str, Any], dotted: str, value: Any) -> None:
    node = tree
    *parents, leaf = dotted.split(".")
    for key in parents:
        child = node.get(key)
        if not isinstance(child, dict):
            raise ConfigError(f"override {dotted}: {key!r} is not a section")
        node = child
    if leaf not in node:
        raise ConfigError(f"override {dotted}: unknown key {leaf!r}")
    node[leaf] = value


def load_params(path: Path | str | None = None, overrides: dict[str, Any] | None = None) -> Params:
    """Load params.yaml (or $LEADRE_PARAMS) and apply dotted overrides such as {"world.scale": "1m"}."""
    path = Path(path or os.environ.get(PARAMS_ENV, DEFAULT_PARAMS_FILE))
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{path}: params file not found (run from the repository root or set {PARAMS_ENV})")
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {err}") from err
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping of sections at the top level")
    for dotted, value in (overrides or {}).items():
        _set_dotted(raw, dotted, value)
    try:
        return Params(**raw, root=path.resolve().parent)
    except ValidationError as err:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}"
            + (f" (got {e['input']!r})" if e["type"] != "extra_forbidden" and not isinstance(e["input"], dict) else "")
            for e in err.errors()
        )
        raise ConfigError(f"{path}: {problems}") from None

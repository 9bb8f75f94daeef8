"""Typed view of params.yaml: the one home of configuration.

Every step takes a `Params`; nothing reads the YAML on its own. Unknown keys and wrong types are errors that name
the key, so a typo never silently falls back to a default.
"""

from __future__ import annotations

import difflib
import json
import os
import typing
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    field_validator,
    model_validator,
)

from leadre.errors import UserError, one_line

PARAMS_ENV = "LEADRE_PARAMS"
DEFAULT_PARAMS_FILE = "params.yaml"
SQLITE_PREFIX = "sqlite:///"  # SQLAlchemy's form: three slashes then a relative path, four for an absolute one


class ConfigError(UserError, ValueError):
    """params.yaml (or an override) is missing, malformed or names an unknown key."""


class _Section(BaseModel):
    # NaN and ±inf are never a setting: a NaN threshold compares False both ways, so a gate built on it passes
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


def _aware(value: datetime | None) -> datetime | None:
    if value is not None and value.tzinfo is None:
        raise ValueError("must carry a UTC offset, e.g. 2026-11-01T00:00:00+00:00")
    return value


class RecboleImportParams(_Section):
    """How `leadre data import --format recbole` maps a RecBole atomic dataset onto the contract."""

    title_fields: list[str] = Field(min_length=1)
    category_fields: list[str] = Field(min_length=1)
    conversion_rating: float | None
    ecpm_seed: int
    ecpm_median: float = Field(gt=0)
    ecpm_sigma: float = Field(ge=0)


class DataParams(_Section):
    # Read as `snapshot_time` (a property): the setting, or else the data's own (see `snapshot_of`).
    snapshot_setting: datetime | None = Field(alias="snapshot_time")
    generated_dir: Path
    imported_dir: Path
    source_dir: Path
    validated_dir: Path
    recbole: RecboleImportParams
    # set by Params: what resolving the snapshot needs beyond this section (values, so equal params stay equal)
    _root: Path = PrivateAttr(Path("."))
    _world_snapshot: datetime | None = PrivateAttr(None)

    @field_validator("snapshot_setting")
    @classmethod
    def _has_offset(cls, value: datetime | None) -> datetime | None:
        return _aware(value)

    @property
    def snapshot_time(self) -> datetime:
        """"Now" for the data in source_dir: nothing happens at or after it. Read when asked, not when the params
        load: `data import` may write the manifest after that."""
        return self.snapshot_of(self._root / self.source_dir)

    def snapshot_of(self, source: Path) -> datetime:
        """The snapshot of the data in `source`: `data.snapshot_time` when set; else the generated world's
        (`world.snapshot_time`) for generated_dir; else what the folder's manifest records (`data import` writes
        it: the value given at import, or the data's own, see leadre/data/importer.py)."""
        if self.snapshot_setting is not None:
            return self.snapshot_setting
        if Path(source).resolve() == (self._root / self.generated_dir).resolve() and self._world_snapshot:
            return self._world_snapshot
        manifest = Path(source) / "manifest.json"
        try:
            recorded = json.loads(manifest.read_text(encoding="utf-8")).get("snapshot_time")
        except (OSError, ValueError, AttributeError):
            recorded = None
        if not recorded:
            raise ConfigError(f"data.snapshot_time is null (take it from the data), but {manifest} records no "
                              "snapshot_time (run `leadre data import` into that folder, or set data.snapshot_time)")
        return datetime.fromisoformat(recorded)


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
    snapshot_time: datetime
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

    @field_validator("snapshot_time")
    @classmethod
    def _has_offset(cls, value: datetime) -> datetime:
        return _aware(value)

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
    # bfloat16 runs the encoder's weights in bf16 (AMX / AVX-512 BF16 CPUs, GPUs): faster, vectors not bit-equal
    encoder_dtype: Literal["float32", "bfloat16"] = "float32"
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


class PromptFeatures(_Section):
    """Facets of the user a prompt shows; switching one off is the paper's feature ablation."""

    profile: bool
    long_term: bool
    short_term: bool
    content: bool


class PromptParams(_Section):
    out_dir: Path
    holdout_days: int = Field(gt=0)
    valid_user_share: float = Field(gt=0, le=1)
    horizon_days: int = Field(gt=0)
    train_responses_per_pair: int = Field(ge=1)
    max_train_cutoffs_per_user: int = Field(ge=1)
    train_cutoff_half_life_days: float | None = Field(gt=0)
    min_history_events: int = Field(ge=1)
    short_term_events: int = Field(ge=1)
    ad_events: int = Field(ge=0)
    long_term_days: int = Field(gt=0)
    long_term_top: int = Field(ge=1)
    max_prompt_tokens: int = Field(ge=64)
    token_counter: str
    users_per_chunk: int = Field(gt=0)
    workers: int = Field(ge=1)
    aux_ratio: AuxRatio
    dpo_same_intent_rejected: float = Field(ge=0, le=1)
    features: PromptFeatures
    seed: int


class TinyModelParams(_Section):
    vocab_size: int = Field(ge=300)
    hidden_size: int = Field(gt=0)
    layers: int = Field(ge=1)
    heads: int = Field(ge=1)
    kv_heads: int = Field(ge=1)
    intermediate_size: int = Field(gt=0)
    max_position_embeddings: int = Field(ge=64)
    tokenizer_corpus_rows: int = Field(gt=0)

    @model_validator(mode="after")
    def _heads_divide(self) -> TinyModelParams:
        if self.hidden_size % self.heads or self.heads % self.kv_heads:
            raise ValueError("hidden_size must be a multiple of heads, and heads a multiple of kv_heads")
        return self


class ModelParams(_Section):
    base_model: str
    tiny: TinyModelParams
    cpu_threads: int = Field(ge=0)


class LoraParams(_Section):
    enabled: bool | Literal["auto"]
    r: int = Field(ge=1)
    alpha: int = Field(ge=1)
    dropout: float = Field(ge=0, lt=1)
    target_modules: str | list[str]


class _TrainerParams(_Section):
    out_dir: Path
    checkpoint_dir: Path
    metrics_file: Path
    max_train_examples: int = Field(ge=0)
    max_eval_examples: int = Field(ge=0)
    epochs: float = Field(gt=0)
    learning_rate: float = Field(gt=0)
    batch_size: int = Field(ge=1)
    gradient_accumulation_steps: int = Field(ge=1)
    warmup_ratio: float = Field(ge=0, lt=1)
    weight_decay: float = Field(ge=0)
    max_length: int = Field(ge=32)
    gradient_checkpointing: bool
    logging_steps: int = Field(ge=1)
    checkpoint_every_steps: int = Field(ge=0)
    seed: int


class SftParams(_TrainerParams):
    completion_only_loss: bool
    early_stopping_patience: int = Field(ge=0)
    lora: LoraParams


class DpoParams(_TrainerParams):
    beta: float = Field(gt=0)
    loss_type: str
    lora: LoraParams


class TrackingParams(_Section):
    tracking_uri: str
    artifact_root: Path
    experiment: str
    log_models: bool
    system_metrics_seconds: float = Field(gt=0)
    receipts_dir: Path


class PriorParams(_Section):
    now_weight: float = Field(ge=0)
    train_weight: float = Field(ge=0)
    half_life_days: float = Field(gt=0)


class DecodeParams(_Section):
    beam_width: int = Field(ge=1)
    batch_size: int = Field(ge=1)
    value_weight: float = Field(ge=0)
    diversity_penalty: float = Field(ge=0)
    device: str
    prior: PriorParams


class BootstrapParams(_Section):
    resamples: int = Field(ge=100)
    confidence: float = Field(gt=0.5, lt=1)
    seed: int


class EvaluateParams(_Section):
    protocol: Literal["temporal", "leave_last_out"]
    split: Literal["valid", "test"]
    candidate_dir: Path
    compare_dirs: dict[str, Path]
    ks: list[int] = Field(min_length=1)
    max_users: int = Field(ge=0)
    seed: int
    exclude_engaged: bool
    cold_user_max_engagements: int = Field(ge=0)
    new_ad_days: int = Field(gt=0)
    value_weights: list[float]
    diversity_penalties: list[float]
    reports_dir: Path
    metrics_file: Path
    bootstrap: BootstrapParams
    # name → settings of the ID-based baselines to run, in order; each name is a class registered in
    # leadre/evaluate/baselines.py, whose params model checks the settings
    baselines: dict[str, Any] = Field(min_length=1)

    @field_validator("baselines")
    @classmethod
    def _registered_baselines(cls, value: dict[str, Any]) -> dict[str, Any]:
        from leadre.evaluate.baselines import baseline_settings  # numpy/pandas: only once params are loaded

        return baseline_settings(value)

    @field_validator("ks")
    @classmethod
    def _has_ten(cls, ks: list[int]) -> list[int]:
        if 10 not in ks or min(ks) < 1:
            raise ValueError("must be positive and include 10 (the @10 metrics are the ones reports and gates use)")
        return sorted(set(ks))


class GateParams(_Section):
    primary_metric: str
    min_relative_lift: float
    guardrails: dict[str, float]
    decision_file: Path


class RegistryParams(_Section):
    model_name: str


class FusionParams(_Section):
    method: Literal["mixture", "rrf"]
    channel: str  # one of evaluate.baselines
    llm_weight: float = Field(ge=0)
    channel_weight: float = Field(ge=0)
    temperature: float = Field(gt=0)  # mixture: the LLM's softmax temperature
    rank_constant: float = Field(ge=0)  # rrf
    depth: int = Field(ge=1)


class NearlineParams(_Section):
    active_days: int = Field(gt=0)
    max_users: int = Field(ge=0)
    top_n: int = Field(ge=1)
    users_per_batch: int = Field(ge=1)
    exclude_engaged: bool
    fusion: bool


class ServeParams(_Section):
    store_url: str
    ads_file: Path
    popularity_days: int = Field(gt=0)
    host: str
    port: int = Field(ge=1, le=65535)
    default_k: int = Field(ge=1)
    max_k: int = Field(ge=1)
    fallback_size: int = Field(ge=1)
    fallback_industries: int = Field(ge=1)
    staleness_limit_s: float = Field(ge=0)
    reload_interval_s: float = Field(ge=0)
    max_header_bytes: int = Field(ge=1024)
    max_headers: int = Field(ge=8)


class ShardCounts(_Section):
    """Processes (pods on Kubernetes) each data-parallel step runs as; 1: one, as `leadre <step>` by hand."""

    sids: int = Field(ge=1, le=1024)
    prompts: int = Field(ge=1, le=1024)
    nearline: int = Field(ge=1, le=1024)


class OrchestrationParams(_Section):
    """The Airflow DAG's settings; $LEADRE_RUNNER, $LEADRE_RETRIES and $LEADRE_SCHEDULE override them."""

    runner: Literal["local", "kubernetes"]
    schedule: str | None
    retries: int = Field(ge=0)
    retry_delay_minutes: float = Field(gt=0)
    retry_exponential_backoff: float = Field(ge=0)
    max_retry_delay_minutes: float = Field(gt=0)
    # GPUs of each sft/dpo pod under runner: kubernetes, one training process per GPU (torchrun)
    gpus_per_training_pod: int = Field(ge=1)
    # per step, overriding the defaults in leadre/steps.py; filled in with those, so every step has one
    execution_timeout_minutes: dict[str, float]
    shards: ShardCounts  # the trigger form's shard fields override these per run

    @field_validator("execution_timeout_minutes")
    @classmethod
    def _known_steps(cls, value: dict[str, float]) -> dict[str, float]:
        from leadre.steps import STEPS

        unknown = [name for name in value if name not in STEPS]
        if unknown:
            raise ValueError(f"unknown steps {', '.join(unknown)}; steps are {', '.join(STEPS)}")
        if any(minutes <= 0 for minutes in value.values()):
            raise ValueError("timeouts must be positive")
        return {**{name: step.timeout_minutes for name, step in STEPS.items()}, **value}

    def timeout(self, step: str) -> timedelta:
        from leadre.steps import get_step

        return timedelta(minutes=self.execution_timeout_minutes.get(step, get_step(step).timeout_minutes))


class Params(_Section):
    data: DataParams
    world: WorldParams
    validation: ValidationParams
    sids: SidsParams
    prompts: PromptParams
    model: ModelParams
    sft: SftParams
    dpo: DpoParams
    tracking: TrackingParams
    decode: DecodeParams
    fusion: FusionParams
    evaluate: EvaluateParams
    gate: GateParams
    registry: RegistryParams
    nearline: NearlineParams
    serve: ServeParams
    orchestration: OrchestrationParams
    root: Path = Field(default=Path("."), exclude=True)

    @model_validator(mode="after")
    def _fusion_channel_is_evaluated(self) -> Params:
        if self.fusion.channel not in self.evaluate.baselines:
            raise ValueError(f"fusion.channel {self.fusion.channel!r} must be one of evaluate.baselines "
                             f"({', '.join(self.evaluate.baselines)})")
        return self

    def model_post_init(self, context: Any) -> None:
        self.data._root, self.data._world_snapshot = self.root, self.world.snapshot_time

    def snapshot_of(self, source: Path) -> datetime:
        return self.data.snapshot_of(source)

    def path(self, relative: Path | str) -> Path:
        """Resolve a params path against the folder params.yaml lives in, as DVC does."""
        relative = Path(relative)
        return relative if relative.is_absolute() else self.root / relative

    def url(self, url: str) -> str:
        """A store URL with a relative SQLite path (`sqlite:///x.db`) resolved like `path`; other URLs as they are."""
        if url.startswith(SQLITE_PREFIX) and not url.startswith(SQLITE_PREFIX + "/"):
            return SQLITE_PREFIX + str(self.path(url[len(SQLITE_PREFIX):]).resolve())
        return url


def did_you_mean(dotted: str, siblings: typing.Iterable[str]) -> str:
    """" — did you mean 'sft.epochs'?" for a misspelt last part of `dotted` among `siblings`; "" when none is close."""
    *parents, leaf = dotted.split(".")
    close = difflib.get_close_matches(leaf, [str(s) for s in siblings], n=1)
    return f" — did you mean '{'.'.join([*parents, close[0]])}'?" if close else ""


def _set_dotted(tree: dict[str, Any], dotted: str, value: Any) -> None:
    node = tree
    parts = dotted.split(".")
    for depth, key in enumerate(parts):
        prefix = ".".join(parts[: depth + 1])
        if key not in node:
            raise ConfigError(f"override: unknown key '{prefix}'{did_you_mean(prefix, node)}")
        if depth == len(parts) - 1:
            node[key] = value
            return
        if not isinstance(node[key], dict):
            raise ConfigError(f"override {dotted}: '{prefix}' is a value, not a section")
        node = node[key]


def _keys_at(loc: tuple[Any, ...]) -> list[str]:
    """The keys params.yaml may hold at `loc` (a path of section names), as spelt in the file; [] below a mapping."""
    model: type[BaseModel] = Params
    for part in loc:
        field = next((f for name, f in model.model_fields.items() if (f.alias or name) == part), None)
        if field is None:
            return []
        # a section is a model, possibly optional (`X | None`); a dict or list field has free keys
        sections = [t for t in (field.annotation, *typing.get_args(field.annotation))
                    if isinstance(t, type) and issubclass(t, BaseModel)]
        if not sections:
            return []
        model = sections[0]
    return [f.alias or name for name, f in model.model_fields.items() if not f.exclude]


def _problem(err: Any, section: tuple[str, ...] = ()) -> str:
    """One pydantic error as "key: what is wrong", an unknown key with the closest known one (`section`: where the
    validated model sits in params.yaml)."""
    loc = (*section, *err["loc"])
    dotted = ".".join(str(p) for p in loc)
    if err["type"] == "extra_forbidden":
        return f"unknown key '{dotted}'{did_you_mean(dotted, _keys_at(loc[:-1]))}"
    got = f" (got {err['input']!r})" if not isinstance(err["input"], dict) else ""
    return (f"{dotted}: " if dotted else "") + err["msg"] + got


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """`KEY=VALUE` strings (as `leadre -S`) → {dotted key: YAML-parsed value}."""
    overrides: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise ConfigError(f"expected KEY=VALUE, got {item!r}")
        overrides[key] = yaml.safe_load(value)
    return overrides


def params_path(path: Path | str | None = None) -> Path:
    """The params file: `path`, else $LEADRE_PARAMS, else ./params.yaml."""
    return Path(path or os.environ.get(PARAMS_ENV, DEFAULT_PARAMS_FILE))


def read_params_file(path: Path | str | None = None) -> dict[str, Any]:
    """params.yaml as a mapping of sections, unvalidated; a ConfigError of one line naming the file when it is
    missing or not a YAML mapping."""
    path = params_path(path)
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{path}: params file not found (run from the repository root or set {PARAMS_ENV})")
    except OSError as err:
        raise ConfigError(f"{path}: cannot be read: {err.strerror or err}") from err
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {one_line(str(err))}") from err
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping of sections at the top level")
    return raw


def load_params(path: Path | str | None = None, overrides: dict[str, Any] | None = None) -> Params:
    """Load params.yaml (or $LEADRE_PARAMS) and apply dotted overrides such as {"world.scale": "1m"}."""
    path = params_path(path)
    raw = read_params_file(path)
    for dotted, value in (overrides or {}).items():
        _set_dotted(raw, dotted, value)
    try:
        return Params(**raw, root=path.resolve().parent)
    except ValidationError as err:
        raise ConfigError(f"{path}: " + "; ".join(_problem(e) for e in err.errors())) from None


def load_section(path: Path | str | None, section: str, changes: dict[str, Any] | None = None) -> Any:
    """One section of params.yaml, typed and checked as `load_params` checks it, with `changes` (keys of the section)
    winning over the file's values. The other sections are not validated: some of their checks import numpy and
    pandas, which the Airflow DAG file, parsed every few seconds, must not pay for."""
    path = params_path(path)
    model = Params.model_fields[section].annotation
    found = read_params_file(path).get(section) or {}
    if not isinstance(found, dict):
        raise ConfigError(f"{path}: {section}: expected a mapping of keys, got {found!r}")
    values = {**found, **(changes or {})}
    try:
        return model(**values)
    except ValidationError as err:
        raise ConfigError(f"{path}: " + "; ".join(_problem(e, (section,)) for e in err.errors())) from None

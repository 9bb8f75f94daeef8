"""Data contracts: the columns, types and rules of every table the platform reads.

One declaration serves three readers: the loader (types and required columns), the Great Expectations suites
(`leadre.data.validate` turns each rule into an expectation) and docs/data.md (which documents the same rules).
Ids are int64 in every table; events point at ads, contents or queries through (domain, object_id).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

Kind = Literal["int", "float", "str", "category", "timestamp"]

TABLES = ("users", "ads", "contents", "queries", "events")

GENDERS = ("female", "male", "unknown")
AD_STATUSES = ("active", "paused", "expired")
LANDING_TYPES = ("web_page", "app_download", "mini_program", "store_product", "lead_form")
CONTENT_KINDS = ("short_video", "article")
DOMAINS = ("ad", "content", "search")
# Which actions each domain allows; the pairs are one of the validation rules.
ACTIONS_BY_DOMAIN = {
    "ad": ("click_ad", "convert_ad"),
    "content": ("play_video", "read_article"),
    "search": ("search",),
}
ACTIONS = tuple(a for actions in ACTIONS_BY_DOMAIN.values() for a in actions)
ACTION_BY_CONTENT_KIND = {"short_video": "play_video", "article": "read_article"}
INDUSTRY_PATTERN = r"^[a-z0-9_]+/[a-z0-9_]+$"  # two levels: industry/sub_industry


@dataclass(frozen=True)
class Column:
    name: str
    kind: Kind
    description: str
    nullable: bool = False
    unique: bool = False
    min: float | None = None
    max: float | None = None
    strict_min: bool = False
    allowed: tuple[str, ...] | None = None
    pattern: str | None = None  # regex every non-null value must match
    text: bool = False  # free text: must contain a non-blank character


@dataclass(frozen=True)
class Table:
    name: str
    description: str
    columns: tuple[Column, ...]
    key: str
    sort_by: tuple[str, ...] = field(default_factory=tuple)

    @property
    def column_names(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.columns)

    def column(self, name: str) -> Column:
        return next(c for c in self.columns if c.name == name)


USERS = Table(
    name="users",
    description="One row per user: the profile facet of the prompt.",
    key="user_id",
    sort_by=("user_id",),
    columns=(
        Column("user_id", "int", "user id", unique=True, min=0),
        Column("gender", "category", "self-reported gender", nullable=True, allowed=GENDERS),
        Column("age", "int", "age in years", nullable=True, min=13, max=100),
        Column("residence", "str", "city/district", nullable=True, text=True),
        Column("education", "category", "highest education", nullable=True, text=True),
        Column("occupation", "category", "occupation", nullable=True, text=True),
    ),
)

ADS = Table(
    name="ads",
    description="One row per ad (marketing object): its text, taxonomy, business value and life cycle.",
    key="ad_id",
    sort_by=("ad_id",),
    columns=(
        Column("ad_id", "int", "ad id", unique=True, min=0),
        Column("title", "str", "ad title as shown", text=True),
        Column("description", "str", "ad body text", text=True),
        Column("industry", "category", "industry/sub_industry", pattern=INDUSTRY_PATTERN),
        Column("advertiser", "category", "advertiser name", text=True),
        Column("landing_type", "category", "what a click opens", allowed=LANDING_TYPES),
        Column("bid", "float", "advertiser bid per click", min=0, strict_min=True),
        Column("ecpm", "float", "expected revenue per 1000 impressions (business value)", min=0, strict_min=True),
        Column("created_at", "timestamp", "launch time (UTC), not after the snapshot"),
        Column("expires_at", "timestamp", "end of delivery (UTC), after created_at"),
        Column("status", "category", "state at the snapshot; `expired` exactly when expires_at <= snapshot",
               allowed=AD_STATUSES),
    ),
)

CONTENTS = Table(
    name="contents",
    description="One row per organic content item (short video or article).",
    key="content_id",
    sort_by=("content_id",),
    columns=(
        Column("content_id", "int", "content id", unique=True, min=0),
        Column("title", "str", "content title", text=True),
        Column("category", "category", "content category", text=True),
        Column("kind", "category", "short_video or article", allowed=CONTENT_KINDS),
    ),
)

QUERIES = Table(
    name="queries",
    description="One row per distinct search query text (the search facet of the prompt).",
    key="query_id",
    sort_by=("query_id",),
    columns=(
        Column("query_id", "int", "query id", unique=True, min=0),
        Column("text", "str", "query text as typed", text=True),
        Column("topic", "category", "an industry/sub_industry or a content category", text=True),
    ),
)

EVENTS = Table(
    name="events",
    description="User behaviour across domains, ordered by user then time.",
    key="user_id",
    sort_by=("user_id", "ts"),
    columns=(
        Column("user_id", "int", "user id (exists in users)", min=0),
        Column("ts", "timestamp", "event time (UTC), before the snapshot"),
        Column("domain", "category", "ad, content or search", allowed=DOMAINS),
        Column("action", "category", "an action allowed for the domain", allowed=ACTIONS),
        Column("object_id", "int", "ad_id, content_id or query_id, by domain", min=0),
    ),
)

CONTRACTS: dict[str, Table] = {t.name: t for t in (USERS, ADS, CONTENTS, QUERIES, EVENTS)}
# Duplicate events are the same user doing the same thing to the same object at the same instant.
EVENT_IDENTITY = ("user_id", "ts", "domain", "action", "object_id")

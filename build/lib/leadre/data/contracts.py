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
# No timestamp may be earlier. Broken exports write 0 (1970-01-01) or a tool's default date for a missing time, and
# such an event would sit years outside any training window while passing every ordering rule; real ad logs this
# platform reads start well after 2000, and the public benchmark logs (MovieLens 100K: 1997) after 1990. A fixed
# bound, not snapshot minus a window: imported history may be long.
EARLIEST_TIME = "1990-01-01T00:00:00+00:00"
# Free text reaches the training prompts verbatim: C0/C1 control characters (NUL, ESC, line breaks, tab) and the
# Unicode direction controls (bidi embeddings, overrides and isolates, which can make a prompt read differently from
# its bytes) are rejected, as are the Unicode line and paragraph separators.
FORBIDDEN_TEXT_CHARACTERS = r"[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028-\u202e\u2066-\u2069]"


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
    text: bool = False  # free text: a non-blank character, no forbidden characters, at most max_length characters
    max_length: int | None = None
    # may be left out of an imported file: `leadre data import` fills its documented default (AD_DEFAULTS) and the
    # import manifest lists what it filled
    optional: bool = False


@dataclass(frozen=True)
class Table:
    name: str
    description: str
    columns: tuple[Column, ...]
    key: str
    sort_by: tuple[str, ...] = field(default_factory=tuple)
    # A single-domain dataset (items and interactions only) has no contents or searches: such a table may be
    # absent (read as empty) or empty.
    optional: bool = False

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
        Column("residence", "str", "city/district", nullable=True, text=True, max_length=100),
        Column("education", "category", "highest education", nullable=True, text=True, max_length=100),
        Column("occupation", "category", "occupation", nullable=True, text=True, max_length=100),
        Column("attributes", "str", "other profile fields, `name=value` joined by '; ' (shown in the profile)",
               nullable=True, text=True, max_length=500, optional=True),
    ),
)

ADS = Table(
    name="ads",
    description="One row per ad (marketing object): its text, taxonomy, business value and life cycle.",
    key="ad_id",
    sort_by=("ad_id",),
    columns=(
        Column("ad_id", "int", "ad id", unique=True, min=0),
        Column("title", "str", "ad title as shown", text=True, max_length=200),
        Column("description", "str", "ad body text", text=True, max_length=2000, optional=True),
        Column("industry", "category", "industry/sub_industry", pattern=INDUSTRY_PATTERN),
        Column("advertiser", "category", "advertiser name", text=True, max_length=200, optional=True),
        Column("landing_type", "category", "what a click opens", allowed=LANDING_TYPES, optional=True),
        Column("bid", "float", "advertiser bid per click", min=0, strict_min=True, optional=True),
        Column("ecpm", "float", "expected revenue per 1000 impressions (business value)", min=0, strict_min=True),
        Column("created_at", "timestamp", "launch time (UTC), not after the snapshot", optional=True),
        Column("expires_at", "timestamp", "end of delivery (UTC), after created_at; null: never expires",
               nullable=True, optional=True),
        Column("status", "category", "state at the snapshot; `expired` exactly when expires_at <= snapshot",
               allowed=AD_STATUSES, optional=True),
    ),
)

CONTENTS = Table(
    name="contents",
    description="One row per organic content item (short video or article).",
    key="content_id",
    sort_by=("content_id",),
    optional=True,
    columns=(
        Column("content_id", "int", "content id", unique=True, min=0),
        Column("title", "str", "content title", text=True, max_length=200),
        Column("category", "category", "content category", text=True, max_length=100),
        Column("kind", "category", "short_video or article", allowed=CONTENT_KINDS),
    ),
)

QUERIES = Table(
    name="queries",
    description="One row per distinct search query text (the search facet of the prompt).",
    key="query_id",
    sort_by=("query_id",),
    optional=True,
    columns=(
        Column("query_id", "int", "query id", unique=True, min=0),
        Column("text", "str", "query text as typed", text=True, max_length=200),
        Column("topic", "category", "an industry/sub_industry or a content category", text=True,
               max_length=100),
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

# What `leadre data import` fills in for an optional ad column the data leaves out (docs/data.md says the same).
AD_DEFAULTS = {
    "description": "the ad's title",
    "advertiser": "unknown",
    "landing_type": "web_page",
    "bid": "1.0",
    "created_at": "the ad's first engagement (the data's first event for an ad nobody engaged with)",
    "expires_at": "null: never expires",
    "status": "expired when expires_at <= snapshot, else active",
}

CONTRACTS: dict[str, Table] = {t.name: t for t in (USERS, ADS, CONTENTS, QUERIES, EVENTS)}
# Duplicate events are the same user doing the same thing to the same object at the same instant.
EVENT_IDENTITY = ("user_id", "ts", "domain", "action", "object_id")

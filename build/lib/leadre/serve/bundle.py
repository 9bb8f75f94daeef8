"""The serving bundle: which model version is champion, and which ads are live right now.

`ServingBundle` is what a bundle loader returns (the owner's loader reads the MLflow registry's `champion` alias; tests
and the benchmark use `FileBundleLoader`). `BundleIndex` is its compiled, read-only form for the hot path: sorted
numpy arrays, so checking a user's 100 candidates is one `searchsorted`, and per-industry popularity lists computed
once per bundle instead of once per request. A new bundle is compiled off the request path, then swapped in whole.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from leadre.errors import UserError
from leadre.io import atomic_file

REQUIRED_AD_COLUMNS = ("ad_id", "industry", "ecpm", "popularity")
LIVE_STATUS = "active"  # leadre.data.contracts.AD_STATUSES: only `active` ads are delivered
_META_MODEL_VERSION = b"leadre.model_version"
_META_ADS_VERSION = b"leadre.ads_version"


class BundleError(UserError, ValueError):
    """A bundle cannot be served; the message names the column or field at fault."""


@dataclass(frozen=True)
class ServingBundle:
    """model_version: the champion's version; None while the registry has no champion (the service then answers
    with the labelled fallback, never 503). ads: live ads with ad_id, industry, ecpm, popularity (any scale;
    higher = shown first in the fallback), optionally status (rows not `active` are dropped) and expires_at (an ad
    stops being served at that instant even before the next bundle). ads_version: bump it when the ads change
    under the same model version, so the reloader picks the new frame up."""

    model_version: str | None
    ads: pd.DataFrame = field(repr=False)
    ads_version: str = ""

    @property
    def key(self) -> tuple[str | None, str]:
        return self.model_version, self.ads_version


class BundleIndex:
    """Live ads in arrays sorted by ad_id, plus each industry's most popular ads (positions into those arrays)."""

    def __init__(self, bundle: ServingBundle, fallback_size: int):
        if not isinstance(bundle, ServingBundle):
            raise BundleError(f"bundle loader returned {type(bundle).__name__}, expected ServingBundle")
        if bundle.model_version is not None and (not isinstance(bundle.model_version, str)
                                                 or not bundle.model_version.strip()):
            raise BundleError(f"model_version must be a non-empty string or None (no champion), got "
                              f"{bundle.model_version!r}")
        ads = _live_ads(bundle.ads).sort_values("ad_id", kind="stable")
        self.model_version = bundle.model_version
        self.ads_version = bundle.ads_version
        self.key = bundle.key
        self.ad_ids = ads["ad_id"].to_numpy(np.int64)
        self.popularity = ads["popularity"].to_numpy(np.float64)
        self.expires_ts = _expiry_seconds(ads)
        # Python mirrors of the same columns for the per-candidate walk (scalar numpy indexing is ~10x a list's).
        self.position: dict[int, int] = {ad_id: i for i, ad_id in enumerate(self.ad_ids.tolist())}
        self.expires_list: list[float] = self.expires_ts.tolist()
        codes, uniques = pd.factorize(ads["industry"].astype(str), sort=True)
        self.industry = codes.astype(np.int32)
        self.industries: tuple[str, ...] = tuple(uniques)
        # Fallback order: popularity, then eCPM (the business value) among equally popular ads, then ad_id.
        order = np.lexsort((self.ad_ids, -ads["ecpm"].to_numpy(np.float64), -self.popularity))
        self.rank = np.empty(len(order), np.int64)
        self.rank[order] = np.arange(len(order))
        self.popular = order[:fallback_size]
        by_code = self.industry[order]
        self.popular_by_industry = [order[by_code == code][:fallback_size] for code in range(len(uniques))]

    def __len__(self) -> int:
        return len(self.ad_ids)

    def live_positions(self, ad_ids: np.ndarray, now: float) -> np.ndarray:
        """Position of each ad in this index, -1 where the ad is not live (absent, or expired by `now`)."""
        if len(self.ad_ids) == 0:
            return np.full(len(ad_ids), -1, np.int64)
        pos = np.minimum(np.searchsorted(self.ad_ids, ad_ids), len(self.ad_ids) - 1)
        live = (self.ad_ids[pos] == ad_ids) & (self.expires_ts[pos] > now)
        return np.where(live, pos, -1)


def _live_ads(ads: pd.DataFrame) -> pd.DataFrame:
    if not isinstance(ads, pd.DataFrame):
        raise BundleError(f"bundle ads must be a DataFrame, got {type(ads).__name__}")
    missing = [c for c in REQUIRED_AD_COLUMNS if c not in ads.columns]
    if missing:
        raise BundleError(f"bundle ads lack column(s) {missing}; required: {list(REQUIRED_AD_COLUMNS)}")
    if "status" in ads.columns:
        ads = ads[ads["status"].astype(str) == LIVE_STATUS]
    if not pd.api.types.is_integer_dtype(ads["ad_id"]):
        raise BundleError(f"bundle ads column 'ad_id' must be integer, got {ads['ad_id'].dtype}")
    duplicated = ads["ad_id"][ads["ad_id"].duplicated()]
    if len(duplicated):
        raise BundleError(f"bundle ads column 'ad_id' has duplicates, e.g. {duplicated.iloc[0]}")
    for column in ("ecpm", "popularity"):
        values = pd.to_numeric(ads[column], errors="coerce")
        if not np.isfinite(values.to_numpy(np.float64)).all():
            raise BundleError(f"bundle ads column {column!r} must be finite numbers")
    if ads["industry"].isna().any():
        raise BundleError("bundle ads column 'industry' has missing values")
    return ads


def _expiry_seconds(ads: pd.DataFrame) -> np.ndarray:
    if "expires_at" not in ads.columns:
        return np.full(len(ads), np.inf)
    expires = pd.to_datetime(ads["expires_at"], utc=True)
    seconds = (expires - pd.Timestamp(0, tz="UTC")).dt.total_seconds().to_numpy(np.float64)
    return np.where(np.isnan(seconds), np.inf, seconds)  # no expiry date: live until a bundle says otherwise


# ---------------------------------------------------------------------------------------------------------------
# A bundle in one Parquet file (the version rides in the file's metadata, so one rename publishes both together)


def write_bundle(path: Path | str, bundle: ServingBundle) -> Path:
    table = pa.Table.from_pandas(bundle.ads, preserve_index=False)
    # no champion: an empty version, which read_bundle turns back into None
    metadata = {**(table.schema.metadata or {}), _META_MODEL_VERSION: (bundle.model_version or "").encode(),
                _META_ADS_VERSION: bundle.ads_version.encode()}
    with atomic_file(path) as tmp:
        pq.write_table(table.replace_schema_metadata(metadata), tmp)
    return Path(path)


def read_bundle(path: Path | str) -> ServingBundle:
    table = pq.read_table(path)
    metadata = table.schema.metadata or {}
    if _META_MODEL_VERSION not in metadata:
        raise BundleError(f"{path}: no {_META_MODEL_VERSION.decode()} in the Parquet metadata (not a bundle file?)")
    return ServingBundle(metadata[_META_MODEL_VERSION].decode() or None, table.to_pandas(),
                         metadata.get(_META_ADS_VERSION, b"").decode())


class FileBundleLoader:
    """A `bundle_loader` over one bundle file; re-reads it only when the file changes, so polling is cheap."""

    def __init__(self, path: Path | str):
        self.path = Path(path)
        self._seen: tuple[int, int, int] | None = None
        self._bundle: ServingBundle | None = None

    def __call__(self) -> ServingBundle:
        stat = os.stat(self.path)
        signature = (stat.st_ino, stat.st_mtime_ns, stat.st_size)
        if self._bundle is None or signature != self._seen:
            self._bundle = read_bundle(self.path)
            self._seen = signature
        return self._bundle

    def __repr__(self) -> str:
        return f"FileBundleLoader({str(self.path)!r})"

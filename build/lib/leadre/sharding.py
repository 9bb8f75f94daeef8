"""Data-parallel shards of a step (`--shard i/n`): which users or ads a shard owns, by a stable hash of the id.

The hash is a fixed 64-bit mix (SplitMix64's finaliser) of the integer id, never Python's `hash()` (salted per
process for strings, and an implementation detail for ints): every process, pod and machine agrees on who owns an
id. A shard's work must not depend on the shard count, so a sharded run writes exactly what one run writes; the
steps arrange that (leadre/prompts/build.py, leadre/sids/build.py, leadre/serve/nearline.py, docs/scaling.md).

Light on purpose (numpy only): the CLI and the DAG parse shard arguments with it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from leadre.errors import UserError

_SHARD = re.compile(r"^\s*(\d+)\s*/\s*(\d+)\s*$")
_MASK = (1 << 64) - 1


class ShardError(UserError, ValueError):
    """A malformed `--shard`, or a merge that finds a shard's part missing."""


def mix64(ids: np.ndarray) -> np.ndarray:
    """SplitMix64's finaliser of each id (two's complement for negatives): uniform uint64 from consecutive ids."""
    with np.errstate(over="ignore"):
        z = np.asarray(ids).astype(np.int64).view(np.uint64) + np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return z ^ (z >> np.uint64(31))


def bucket_of(ids: np.ndarray, buckets: int) -> np.ndarray:
    """Each id's bucket in [0, buckets), by its stable hash."""
    return (mix64(ids) % np.uint64(max(buckets, 1))).astype(np.int64)


@dataclass(frozen=True)
class Shard:
    index: int
    count: int

    @classmethod
    def parse(cls, text: str) -> Shard:
        """"i/n" with 0 <= i < n, e.g. "2/3" is the third of three shards."""
        match = _SHARD.match(str(text))
        if not match:
            raise ShardError(f"--shard {text!r}: expected i/n, e.g. 0/4 (shard i of n, counted from 0)")
        shard = cls(int(match.group(1)), int(match.group(2)))
        if not 0 <= shard.index < shard.count:
            raise ShardError(f"--shard {text!r}: need 0 <= i < n")
        return shard

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"

    @property
    def name(self) -> str:
        """A folder or table name part: shard-00002-of-00003."""
        return f"shard-{self.index:05d}-of-{self.count:05d}"

    def owns(self, ids: np.ndarray) -> np.ndarray:
        """Mask of the ids this shard owns (by hash; the shards of one count partition every id)."""
        return bucket_of(ids, self.count) == self.index

    def owns_bucket(self, buckets: np.ndarray) -> np.ndarray:
        """Mask of the buckets (e.g. prompt chunks, numbered independently of the shard count) this shard owns."""
        return np.asarray(buckets) % self.count == self.index


ALL = Shard(0, 1)  # the unsharded run is shard 0 of 1


def parts_dir(out_dir: Path) -> Path:
    """Where the shards of a step whose output is `out_dir` leave their parts for the merge (a sibling folder)."""
    return out_dir.with_name(out_dir.name + ".shards")


def shard_dirs(out_dir: Path, count: int) -> list[Path]:
    """The parts folders of all `count` shards, in order; a missing one is an error naming it and its command."""
    folders = [parts_dir(out_dir) / Shard(i, count).name for i in range(count)]
    missing = [f for f in folders if not f.is_dir()]
    if missing:
        raise ShardError(f"{missing[0]}: not found ({len(missing)} of {count} shard(s) missing; run the step with "
                         f"--shard {Shard(folders.index(missing[0]), count)} first)")
    return folders

"""Sharded data-parallel steps (`--shard i/n` + merge) write what one unsharded run writes, byte for byte.

On the tiny world: S-IDs (shards fill the embeddings cache, the merge only quantises) and prompts (shards write their
chunks of users with their auxiliary tasks, the merge links them and writes the card). The near-line job's shards and
the candidate store's staged snapshots are in tests/serve/test_store.py and tests/pipeline/test_airflow.py.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from leadre.sharding import Shard, ShardError, bucket_of, mix64, parts_dir
from tests.conftest import write_params

SHARDS = 3


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def validated(tmp_path_factory, tiny_world) -> Path:
    from leadre.data.validate import run_validate

    # several chunks of users, so that 3 shards each own some (and the chunk → shard mapping is exercised)
    params = write_params(tmp_path_factory.mktemp("sharded"), {"prompts.users_per_chunk": 40})
    shutil.copytree(tiny_world, params.path(params.data.generated_dir))
    run_validate(params)
    return params.root


def _params(root: Path, **overrides):
    return write_params(root, {"prompts.users_per_chunk": 40, **overrides})


def test_shard_hash_is_stable_and_partitions_every_id():
    ids = np.arange(-5, 10_000, dtype=np.int64)
    # fixed values: the same on every machine and process (Python's hash() of an int would be the id itself)
    assert mix64(np.array([0, 1, 42])).tolist() == [16294208416658607535, 10451216379200822465,
                                                    13679457532755275413]
    owners = np.stack([Shard(i, 4).owns(ids) for i in range(4)])
    assert (owners.sum(0) == 1).all()
    assert owners.sum(1).min() > 0.2 * len(ids)  # balanced enough
    assert (bucket_of(ids, 7) == bucket_of(ids.copy(), 7)).all()
    assert Shard.parse("2/3") == Shard(2, 3)
    for bad in ("3/3", "1", "-1/2", "a/b"):
        with pytest.raises(ShardError, match="--shard"):
            Shard.parse(bad)


@pytest.fixture
def one_torch_thread():
    """The encoder at one thread, as every shard process of bench.shards runs. With more threads, how
    the kernels split a batch's sums across threads depends on the batch's shape, and a shard's batches hold other
    texts than one run's: the vectors then differ in the last bits (on the tiny world the S-IDs stayed equal, the
    codebooks' floats did not). Set here, so the test does not depend on which tests ran before it in its worker."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_sharded_sids_and_prompts_equal_one_run(tmp_path, validated, one_torch_thread):
    from leadre.prompts.build import run_build_prompts
    from leadre.prompts.card import merge_prompts
    from leadre.sids.build import run_build_sids

    one = _params(validated)
    sids_one = run_build_sids(one)
    prompts_one = run_build_prompts(one)

    sharded = _params(validated, **{"sids.out_dir": str(tmp_path / "sids"),
                                    "sids.embeddings_cache": str(tmp_path / "embeddings"),
                                    "prompts.out_dir": str(tmp_path / "prompts")})
    encoded = [run_build_sids(sharded, Shard(i, SHARDS))["encoded_texts"] for i in range(SHARDS)]
    assert sum(encoded) == sids_one["ads"] and min(encoded) > 0  # every ad encoded once, by one shard
    merged_sids = run_build_sids(sharded)
    assert merged_sids["encoded_texts"] == 0  # the merge only quantises
    assert _files(sharded.path(sharded.sids.out_dir)) == _files(one.path(one.sids.out_dir))

    out = sharded.path(sharded.prompts.out_dir)
    for i in range(SHARDS):
        assert run_build_prompts(sharded, Shard(i, SHARDS))["chunks"] > 0
    with pytest.raises(ShardError, match=r"shard-00000-of-00004.*--shard 0/4"):
        merge_prompts(sharded, SHARDS + 1)  # a merge over the wrong count names the missing part
    merged = merge_prompts(sharded, SHARDS)
    assert merged["counts"] == prompts_one["counts"]
    assert _files(out) == _files(one.path(one.prompts.out_dir))
    assert not parts_dir(out).exists()  # the parts are gone once merged


def test_cli_shard_and_merge(tmp_path, validated):
    """`leadre prompts build --shard i/n` then `--merge n`, as the DAG's mapped tasks and merge task run them."""
    params = _params(validated, **{"prompts.out_dir": str(tmp_path / "prompts")})
    leadre = [sys.executable, "-m", "leadre.cli", "--params", str(params.root / "params.yaml")]
    for i in range(2):
        done = subprocess.run([*leadre, "prompts", "build", "--shard", f"{i}/2"], capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
        assert f"shard {i}/2" in done.stdout
    bad = subprocess.run([*leadre, "prompts", "build", "--shard", "2/2"], capture_output=True, text=True)
    assert bad.returncode == 1 and "need 0 <= i < n" in bad.stderr
    # the merge is a light process: it links parts and writes the card, importing none of the table libraries
    code = ("import sys; from leadre.cli import app; sys.argv = ['leadre', *sys.argv[1:]]\n"
            "try: app()\n"
            "finally: print(sorted(m for m in ('pandas', 'pyarrow', 'scipy', 'torch') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code, *leadre[3:], "prompts", "build", "--merge", "2"],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "prompts" / "card.json").is_file()
    assert done.stdout.strip().endswith("[]"), done.stdout

from pathlib import Path

import pytest
import yaml

from leadre.config import ConfigError, load_params
from tests.conftest import REPO


def _params_file(tmp_path: Path, mutate) -> Path:
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    mutate(raw)
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def test_repository_params_load_typed():
    params = load_params(REPO / "params.yaml")
    assert params.world.size.users == params.world.scales[params.world.scale].users
    assert params.data.snapshot_time.utcoffset().total_seconds() == 0
    assert params.path(params.data.validated_dir) == REPO / "data" / "validated"


def test_unknown_key_is_named(tmp_path):
    path = _params_file(tmp_path, lambda raw: raw["world"].update(n_userz=5))
    with pytest.raises(ConfigError, match=r"world\.n_userz: Extra inputs are not permitted"):
        load_params(path)


def test_wrong_type_names_key_and_value(tmp_path):
    path = _params_file(tmp_path, lambda raw: raw["world"].update(history_days="sixty"))
    with pytest.raises(ConfigError, match=r"world\.history_days.*'sixty'"):
        load_params(path)


def test_domain_mix_must_sum_to_one(tmp_path):
    path = _params_file(tmp_path, lambda raw: raw["world"]["domain_mix"].update(ad=0.9))
    with pytest.raises(ConfigError, match="sum to 1"):
        load_params(path)


def test_snapshot_time_needs_an_offset(tmp_path):
    path = _params_file(tmp_path, lambda raw: raw["data"].update(snapshot_time="2026-11-01T00:00:00"))
    with pytest.raises(ConfigError, match="UTC offset"):
        load_params(path)


def test_unknown_scale_is_rejected(tmp_path):
    path = _params_file(tmp_path, lambda raw: raw["world"].update(scale="huge"))
    with pytest.raises(ConfigError, match="scale 'huge' is not one of"):
        load_params(path)


def test_overrides_apply_and_unknown_override_fails():
    assert load_params(REPO / "params.yaml", {"world.scale": "tiny"}).world.size.users == 400
    with pytest.raises(ConfigError, match="unknown key 'scal'"):
        load_params(REPO / "params.yaml", {"world.scal": "tiny"})


def test_missing_params_file(tmp_path):
    with pytest.raises(ConfigError, match="params file not found"):
        load_params(tmp_path / "nope.yaml")

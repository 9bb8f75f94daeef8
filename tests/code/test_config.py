from pathlib import Path

import pytest
import yaml

from leadre.config import ConfigError, load_params
from tests.code.test_cli import _leadre
from tests.conftest import REPO, write_params


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
    with pytest.raises(ConfigError, match=r"unknown key 'world\.n_userz'"):
        load_params(path)


def test_misspelt_key_in_the_file_names_the_key_it_resembles(tmp_path):
    path = _params_file(tmp_path, lambda raw: raw["sft"].update(epoch=raw["sft"].pop("epochs")))
    with pytest.raises(ConfigError) as raised:
        load_params(path)
    assert "unknown key 'sft.epoch' — did you mean 'sft.epochs'?" in str(raised.value)
    # a key spelt by its alias (data.snapshot_time) is suggested as the file spells it
    path = _params_file(tmp_path, lambda raw: raw["data"].update(snapshot_tme=raw["data"].pop("snapshot_time")))
    with pytest.raises(ConfigError, match="did you mean 'data.snapshot_time'"):
        load_params(path)


def test_nothing_close_gets_no_guess(tmp_path):
    path = _params_file(tmp_path, lambda raw: raw["sft"].update(zzzz=1))
    with pytest.raises(ConfigError) as raised:
        load_params(path)
    assert "unknown key 'sft.zzzz'" in str(raised.value) and "did you mean" not in str(raised.value)


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
    with pytest.raises(ConfigError, match="unknown key 'world.scal' — did you mean 'world.scale'"):
        load_params(REPO / "params.yaml", {"world.scal": "tiny"})
    with pytest.raises(ConfigError, match="unknown key 'wrld' — did you mean 'world'"):
        load_params(REPO / "params.yaml", {"wrld.scale": "tiny"})
    with pytest.raises(ConfigError, match="'world.scale' is a value, not a section"):
        load_params(REPO / "params.yaml", {"world.scale.x": "tiny"})


def test_cli_suggests_the_key_and_the_command_a_user_misspelt(tmp_path):
    write_params(tmp_path)
    key = _leadre(tmp_path, "-S", "sft.epoch=3", "sft")
    assert key.returncode != 0 and key.stderr == (
        "error: override: unknown key 'sft.epoch' — did you mean 'sft.epochs'?\n")
    command = _leadre(tmp_path, "evalute")
    assert command.returncode != 0 and "No such command 'evalute'. Did you mean 'evaluate'?" in command.stderr
    subcommand = _leadre(tmp_path, "sids", "bild")
    assert subcommand.returncode != 0 and "Did you mean 'build'?" in subcommand.stderr
    assert "Traceback" not in key.stderr + command.stderr + subcommand.stderr


def test_missing_params_file(tmp_path):
    with pytest.raises(ConfigError, match="params file not found"):
        load_params(tmp_path / "nope.yaml")


def test_one_section_loads_as_the_whole_file_checks_it(tmp_path):
    from leadre.config import load_section

    assert load_section(REPO / "params.yaml", "orchestration") == load_params(REPO / "params.yaml").orchestration
    assert load_section(REPO / "params.yaml", "orchestration", {"retries": 0}).retries == 0
    path = _params_file(tmp_path, lambda raw: raw["orchestration"].update(retries=-1))
    with pytest.raises(ConfigError, match=r"orchestration\.retries: Input should be greater than or equal to 0"):
        load_section(path, "orchestration")

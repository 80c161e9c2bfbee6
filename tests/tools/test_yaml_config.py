"""MindFormerConfig: YAML loading, base_config chains, dotted merges, templates and strict sections."""

import pytest

from torchformers.tools.register.config import ConfigError, MindFormerConfig, parse_value


def write(path, text):
    path.write_text(text)
    return path


def test_attribute_access_missing_is_none_and_sorted_keys(tmp_path):
    cfg = MindFormerConfig(str(write(tmp_path / "a.yaml", "zeta: 1\nalpha:\n  beta: 2\n")))
    assert cfg.alpha.beta == 2 and cfg.zeta == 1
    assert cfg.missing is None and cfg.alpha.missing is None
    keys = list(cfg)
    assert keys == sorted(keys)


def test_exponent_floats_are_floats(tmp_path):
    cfg = MindFormerConfig(str(write(tmp_path / "f.yaml", "a: 1e-5\nb: 1.0e-5\nc: 3E+2\nd: 5\ne: '1e-5'\n")))
    assert cfg.a == 1e-5 and isinstance(cfg.a, float)
    assert cfg.b == 1e-5 and cfg.c == 300.0 and isinstance(cfg.d, int)
    assert cfg.e == "1e-5"  # quoted stays a string


def test_base_config_chain_lists_and_current_file_wins(tmp_path):
    sub = tmp_path / "sub"
    sub.mkdir()
    write(sub / "root.yaml", "seed: 1\nmodel:\n  model_config: {type: A, hidden: 8, layers: 2}\n  arch: {type: M}\n")
    write(sub / "mid.yaml", "base_config: root.yaml\nmodel:\n  model_config: {hidden: 16}\n")
    write(tmp_path / "other.yaml", "output_dir: ./elsewhere\nseed: 2\n")
    top = write(tmp_path / "top.yaml", "base_config: [sub/mid.yaml, other.yaml]\nmodel:\n  model_config: {layers: 4}\n")
    cfg = MindFormerConfig(str(top))
    assert cfg.model.model_config.to_dict() == {"type": "A", "hidden": 16, "layers": 4}
    assert cfg.seed == 2 and cfg.output_dir == "./elsewhere"
    assert "base_config" not in cfg


def test_base_config_errors(tmp_path):
    bad = write(tmp_path / "bad.yaml", "base_config: nowhere.yaml\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml: base_config file 'nowhere.yaml' not found"):
        MindFormerConfig(str(bad))
    write(tmp_path / "c1.yaml", "base_config: c2.yaml\n")
    write(tmp_path / "c2.yaml", "base_config: c1.yaml\n")
    with pytest.raises(ConfigError, match="base_config cycle"):
        MindFormerConfig(str(tmp_path / "c1.yaml"))


def test_yaml_errors_name_the_file(tmp_path):
    with pytest.raises(ConfigError, match=r"broken\.yaml: not valid YAML"):
        MindFormerConfig(str(write(tmp_path / "broken.yaml", "a: [1, 2\n")))
    with pytest.raises(ConfigError, match="does not exist"):
        MindFormerConfig(str(tmp_path / "absent.yaml"))
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        MindFormerConfig(str(write(tmp_path / "list.yaml", "- 1\n- 2\n")))


def test_merge_from_dict_get_set_and_save_round_trip(tmp_path):
    cfg = MindFormerConfig(str(write(tmp_path / "m.yaml", "runner_config:\n  batch_size: 2\n")))
    cfg.merge_from_dict({"runner_config.epochs": 3, "new.deep.key": "x"})
    assert cfg.runner_config.epochs == 3 and cfg.new.deep.key == "x"
    assert cfg.get_value("new.deep.key") == "x" and cfg.get_value("no.such", 7) == 7
    cfg.set_value("runner_config.batch_size", 8)
    cfg.save(tmp_path / "out" / "saved.yaml")
    again = MindFormerConfig(str(tmp_path / "out" / "saved.yaml"))
    assert again.runner_config.batch_size == 8 and again.new.deep.key == "x"


def test_template_fills_defaults_by_run_mode(tmp_path):
    path = write(
        tmp_path / "t.yaml",
        "runner_config:\n  epochs: 3\noptimizer:\n  type: FusedAdamWeightDecay\n"
        "callbacks:\n  - type: CheckpointMonitor\n  - type: MFLossMonitor\n    per_print_times: 5\n",
    )
    train = MindFormerConfig(str(path), run_mode="train")
    assert train.runner_config.batch_size == 1 and train.runner_config.epochs == 3
    assert train.parallel_config.data_parallel == 1 and train.recompute_config.recompute is False
    assert train.optimizer.to_dict() == {"type": "FusedAdamWeightDecay"}  # given section replaces the default block
    assert train.lr_schedule.type == "CosineWithWarmUpLR"  # absent section gets the default block
    assert [c["type"] for c in train.callbacks] == ["MFLossMonitor", "ObsMonitor", "CheckpointMonitor"]
    assert train.callbacks[0]["per_print_times"] == 5
    assert train.seed == 1 and train.output_dir == "./output" and train.load_checkpoint == ""
    predict = MindFormerConfig(str(path), run_mode="predict")
    assert predict.lr_schedule is None and predict.recompute_config is None


@pytest.mark.parametrize(
    "section,key,hint",
    [
        ("parallel_config", "data_paralel", "data_parallel"),
        ("recompute_config", "recompute_layers", "recompute"),
        ("runner_config", "batchsize", "batch_size"),
        ("moe_config", "expert_nums", "expert_num"),
    ],
)
def test_strict_sections_reject_unknown_keys(tmp_path, section, key, hint):
    path = write(tmp_path / "s.yaml", f"{section}:\n  {key}: 2\n")
    with pytest.raises(ConfigError) as info:
        MindFormerConfig(str(path), run_mode="train")
    message = str(info.value)
    assert str(path) in message and f"'{section}.{key}'" in message and f"'{hint}'" in message


def test_invalid_run_mode_in_yaml(tmp_path):
    expected = "run_mode is 'deploy'; expected one of train, finetune, eval, predict, serve, chat"
    with pytest.raises(ConfigError, match=expected):
        MindFormerConfig(str(write(tmp_path / "r.yaml", "run_mode: deploy\n")))


@pytest.mark.parametrize(
    "text,value",
    [
        ("1", 1),
        ("-3", -3),
        ("1.5", 1.5),
        ("1e-5", 1e-5),
        ("True", True),
        ("False", False),
        ("[1, 2]", [1, 2]),
        ('{"a": 1}', {"a": 1}),
        ("null", None),
        ("None", "None"),
        ("abc", "abc"),
        ("llama2_7b", "llama2_7b"),
    ],
)
def test_parse_value(text, value):
    assert parse_value(text) == value and type(parse_value(text)) is type(value)

"""run_mindformer.py: every argument lands in its key, overrides, run-mode dispatch, auto_register."""

import json
import subprocess
import sys
import textwrap

import pytest

from torchformers.cli import build_parser, config_from_args, main
from torchformers.tools.register.config import ConfigError

REPO = __import__("pathlib").Path(__file__).resolve().parents[2]

BASE_YAML = """\
run_mode: train
trainer: {type: CausalLanguageModelingTrainer, model_name: tiny}
model:
  model_config: {type: LlamaConfig, seq_length: 16}
  arch: {type: LlamaForCausalLM}
train_dataset:
  data_loader: {type: ParquetDataLoader, dataset_dir: ''}
eval_dataset:
  data_loader: {type: ParquetDataLoader, dataset_dir: ''}
"""


@pytest.fixture
def yaml_path(tmp_path):
    path = tmp_path / "task.yaml"
    path.write_text(BASE_YAML)
    return path


ARG_CASES = [
    (["--mode", "1"], "context.mode", 1),
    (["--device_id", "3"], "context.device_id", 3),
    (["--device_target", "CPU"], "context.device_target", "CPU"),
    (["--do_eval", "true"], "do_eval", True),
    (["--train_dataset_dir", "/data/train"], "train_dataset.data_loader.dataset_dir", "/data/train"),
    (["--eval_dataset_dir", "/data/eval"], "eval_dataset.data_loader.dataset_dir", "/data/eval"),
    (["--load_checkpoint", "w.safetensors"], "load_checkpoint", "w.safetensors"),
    (["--src_strategy_path_or_dir", "s/"], "src_strategy_path_or_dir", "s/"),
    (["--auto_trans_ckpt", "True"], "auto_trans_ckpt", True),
    (["--transform_process_num", "2"], "transform_process_num", 2),
    (["--only_save_strategy", "false"], "only_save_strategy", False),
    (["--resume_training", "true"], "resume_training", True),
    (["--resume_training", "llama_rank_0-1_10.ckpt"], "resume_training", "llama_rank_0-1_10.ckpt"),
    (["--strategy_load_checkpoint", "st.ckpt"], "parallel.strategy_ckpt_load_file", "st.ckpt"),
    (["--seed", "42"], "seed", 42),
    (["--use_parallel", "False"], "use_parallel", False),
    (["--profile", "false"], "profile", False),
    (["--options", "runner_config.stop_step=5", "model.model_config.theta=500000.0"], "runner_config.stop_step", 5),
    (["--epochs", "3"], "runner_config.epochs", 3),
    (["--batch_size", "4"], "runner_config.batch_size", 4),
    (["--gradient_accumulation_steps", "8"], "runner_config.gradient_accumulation_steps", 8),
    (["--sink_mode", "false"], "runner_config.sink_mode", False),
    (["--num_samples", "100"], "eval_dataset.data_loader.num_samples", 100),
    (["--output_dir", "/tmp/out"], "output_dir", "/tmp/out"),
    (["--do_sample", "true"], "model.model_config.do_sample", True),
    (["--predict_batch_size", "2"], "predict_batch_size", 2),
    (["--run_mode", "finetune"], "run_mode", "finetune"),
]


@pytest.mark.parametrize("argv,key,value", ARG_CASES, ids=[c[0][0] for c in ARG_CASES])
def test_each_argument_lands_in_its_key(yaml_path, argv, key, value):
    cfg = config_from_args(["--config", str(yaml_path), *argv])
    assert cfg.get_value(key) == value


def test_num_samples_sets_both_datasets_and_options_merge(yaml_path):
    cfg = config_from_args(
        ["--config", str(yaml_path), "--num_samples", "7", "--options", "model.model_config.theta=5e5"]
    )
    assert cfg.train_dataset.data_loader.num_samples == 7
    assert cfg.model.model_config.theta == 5e5


def test_predict_data_semantics(yaml_path, tmp_path):
    one = config_from_args(
        ["--config", str(yaml_path), "--run_mode", "predict", "--predict_data", "line one\\nline two"]
    )
    assert one.input_data == "line one\nline two"
    many = config_from_args(["--config", str(yaml_path), "--run_mode", "predict", "--predict_data", "a", "b"])
    assert many.input_data == ["a", "b"]
    with pytest.raises(ConfigError, match="is a folder"):
        config_from_args(["--config", str(yaml_path), "--run_mode", "predict", "--predict_data", str(tmp_path)])


def test_free_form_overrides(yaml_path):
    cfg = config_from_args(
        [
            "--config",
            str(yaml_path),
            "--model.model_config.seq_length",
            "1024",
            "--model.model_config.theta=500000",
            "--model.model_config.extend_method",
            "None",
            "--runner_config.batch_size=2",
            "--new_top_key",
            "[1, 2]",
        ]
    )
    mc = cfg.model.model_config
    assert mc.seq_length == 1024 and mc.theta == 500000 and mc.extend_method == "None"
    assert cfg.runner_config.batch_size == 2 and cfg.new_top_key == [1, 2]


@pytest.mark.parametrize(
    "extra,message",
    [
        (["--model.no_such.key", "1"], r"'no_such' is not a key of model in .*task\.yaml"),
        (["--model.model_config.seq_length"], "must come as '--key value' pairs"),
        (["-x", "1"], "must start with '--'"),
        (
            ["--parallel_config.data_paralel", "2"],
            r"unknown key 'parallel_config.data_paralel'; did you mean 'data_parallel'",
        ),
        (["--run_mode", "deploy"], "run_mode is 'deploy'"),
        (["--modal_type", "image"], "multimodal inputs are not supported"),
        (["--only_save_strategy", "true"], "only_save_strategy"),
    ],
)
def test_override_and_argument_errors(yaml_path, extra, message):
    with pytest.raises(ConfigError, match=message):
        config_from_args(["--config", str(yaml_path), *extra])


def test_remote_save_url_is_accepted_and_logged_as_without_effect(yaml_path, caplog):
    from torchformers.cli import log_no_effect

    config = config_from_args(["--config", str(yaml_path), "--remote_save_url", "obs://bucket/run"])
    assert config.remote_save_url == "obs://bucket/run"
    with caplog.at_level("INFO", logger="torchformers"):
        log_no_effect(config)
    assert len(caplog.messages) == 1
    assert "remote_save_url ('obs://bucket/run': nothing is uploaded to ModelArts/OBS)" in caplog.messages[0]


def test_mindspore_only_switches_that_are_on_are_logged_as_without_effect(yaml_path, caplog):
    from torchformers.cli import log_no_effect

    inert = config_from_args(["--config", str(yaml_path)])  # the template's defaults: every switch off
    switched = config_from_args(
        ["--config", str(yaml_path), "--profile", "true", "--auto_tune=True", "--layer_scale=True",
         "--micro_batch_interleave_num=2"]
    )  # fmt: skip
    with caplog.at_level("INFO", logger="torchformers"):
        log_no_effect(inert)
        assert not [m for m in caplog.messages if "profile" in m or "auto_tune" in m]
        log_no_effect(switched)
    line = caplog.messages[-1]
    for key in ("profile (True)", "profile_start_step", "profile_memory", "auto_tune (True)",
                "layer_scale (True)", "layer_decay", "micro_batch_interleave_num (2)"):  # fmt: skip
        assert key in line
    assert "lr_scale_factor" not in line  # lr_scale is off


def test_relative_config_resolves_against_cwd_then_repo_root(tmp_path, monkeypatch, yaml_path):
    monkeypatch.chdir(tmp_path)
    assert config_from_args(["--config", "task.yaml"]).run_mode == "train"
    (REPO / "tests" / "_tmp_cli_root.yaml").write_text(BASE_YAML)
    try:
        assert config_from_args(["--config", "tests/_tmp_cli_root.yaml"]).run_mode == "train"
    finally:
        (REPO / "tests" / "_tmp_cli_root.yaml").unlink()
    with pytest.raises(ConfigError, match=r"--config 'nope.yaml': no such file \(tried .*nope.yaml or .*nope.yaml\)"):
        config_from_args(["--config", "nope.yaml"])


def test_help_lists_every_argument_with_a_meaning():
    out = subprocess.run([sys.executable, str(REPO / "run_mindformer.py"), "--help"], capture_output=True, text=True)
    assert out.returncode == 0
    parser = build_parser()
    for action in parser._actions:
        if action.dest == "help":
            continue
        assert action.help, action.dest
        assert f"--{action.dest}" in out.stdout
    for name in [
        "config",
        "mode",
        "device_id",
        "device_target",
        "run_mode",
        "do_eval",
        "train_dataset_dir",
        "eval_dataset_dir",
        "predict_data",
        "modal_type",
        "predict_batch_size",
        "adapter_id",
        "load_checkpoint",
        "src_strategy_path_or_dir",
        "auto_trans_ckpt",
        "transform_process_num",
        "only_save_strategy",
        "resume_training",
        "strategy_load_checkpoint",
        "remote_save_url",
        "seed",
        "use_parallel",
        "profile",
        "options",
        "epochs",
        "batch_size",
        "gradient_accumulation_steps",
        "sink_mode",
        "num_samples",
        "output_dir",
        "register_path",
        "do_sample",
    ]:
        assert f"--{name}" in out.stdout


# --- auto_register through the launcher, as MindFormers' tests/st/test_auto_register does ------------------

REGISTER_MODULE = textwrap.dedent(
    """
    import json
    import os

    from torchformers.tools.register.build import (build_callback, build_lr, build_model, build_optim,
                                                   build_tokenizer)


    class ExtConfig:
        def __init__(self, hidden=4, **kwargs):
            self.hidden = hidden


    class ExtModel:
        def __init__(self, config):
            self.config = config


    class ExtTokenizer:
        def __init__(self, vocab_file=None):
            self.vocab_file = vocab_file


    class ExtOptim:
        def __init__(self, learning_rate=0.1):
            self.learning_rate = learning_rate


    class ExtLR:
        def __init__(self, learning_rate=0.1, warmup_steps=0):
            self.learning_rate = learning_rate


    class ExtCallback:
        def __init__(self, tag="cb"):
            self.tag = tag


    class ExtTrainer:
        def __init__(self, model_name=None):
            self.model_name = model_name

        def _report(self, config, mode, **extra):
            model = build_model(config.model)
            ext_callbacks = [c for c in config.callbacks if c["type"].startswith("Ext")]
            report = {
                "mode": mode,
                "model": type(model).__name__,
                "config": type(model.config).__name__,
                "hidden": model.config.hidden,
                "tokenizer": type(build_tokenizer(config.processor.tokenizer)).__name__,
                "optimizer": type(build_optim(config.optimizer)).__name__,
                "lr": type(build_lr(config.lr_schedule)).__name__,
                "callbacks": [type(c).__name__ for c in build_callback(ext_callbacks)],
                **extra,
            }
            os.makedirs(config.output_dir, exist_ok=True)
            with open(os.path.join(config.output_dir, "report.json"), "w") as f:
                json.dump(report, f)

        def train(self, config):
            self._report(config, "train")

        def evaluate(self, config, eval_checkpoint=None):
            self._report(config, "eval", checkpoint=eval_checkpoint)

        def predict(self, config, input_data=None, batch_size=None):
            self._report(config, "predict", input_data=input_data)
    """
)

AUTO_YAML = """\
run_mode: train
trainer: {type: ExtTrainer, auto_register: ext_module.ExtTrainer, model_name: ext}
model:
  model_config: {type: ExtConfig, auto_register: ext_module.ExtConfig, hidden: 8}
  arch: {type: ExtModel, auto_register: ext_module.ExtModel}
processor:
  tokenizer: {type: ExtTokenizer, auto_register: ext_module.ExtTokenizer, vocab_file: v.model}
optimizer: {type: ExtOptim, auto_register: ext_module.ExtOptim, learning_rate: 0.01}
lr_schedule: {type: ExtLR, auto_register: ext_module.ExtLR, warmup_steps: 3}
callbacks:
  - {type: ExtCallback, auto_register: ext_module.ExtCallback}
"""


@pytest.fixture
def auto_project(tmp_path):
    ext = tmp_path / "ext_code"
    ext.mkdir()
    (ext / "ext_module.py").write_text(REGISTER_MODULE)
    (tmp_path / "auto.yaml").write_text(AUTO_YAML)
    return tmp_path


@pytest.mark.parametrize("how", ["flag", "env"])
@pytest.mark.parametrize("run_mode", ["train", "eval", "predict"])
def test_auto_register_every_block_through_the_launcher(auto_project, clean_register_env, how, run_mode):
    out = auto_project / f"out_{how}_{run_mode}"
    argv = ["--config", str(auto_project / "auto.yaml"), "--run_mode", run_mode, "--output_dir", str(out)]
    if how == "flag":
        argv += ["--register_path", str(auto_project / "ext_code")]
    else:
        clean_register_env.setenv("REGISTER_PATH", str(auto_project / "ext_code"))
    if run_mode == "predict":
        argv += ["--predict_data", "hello"]
    assert main(argv) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["mode"] == run_mode
    assert report["model"] == "ExtModel" and report["config"] == "ExtConfig" and report["hidden"] == 8
    assert report["tokenizer"] == "ExtTokenizer"
    if run_mode != "predict":
        assert report["optimizer"] == "ExtOptim" and report["lr"] == "ExtLR"
        assert report["callbacks"] == ["ExtCallback"]


def test_launcher_user_errors_are_one_line(auto_project, clean_register_env, capsys):
    code = main(["--config", str(auto_project / "auto.yaml"), "--output_dir", str(auto_project / "o")])
    assert code == 2
    err = capsys.readouterr().err
    assert "needs a register path: pass --register_path DIR" in err and "Traceback" not in err
    code = main(["--config", str(auto_project / "auto.yaml"), "--register_path", str(auto_project / "missing")])
    assert code == 2
    assert "--register_path" in capsys.readouterr().err

"""MindFormers' names and import paths work unchanged (issue #16, item 2): the import lines of user scripts,
the Auto classes, `TrainingArguments`, the `Trainer` helpers and `init_context`."""

from __future__ import annotations

import json
import logging

import pytest
import torch
import yaml

import torchformers
from torchformers.errors import ConfigError
from torchformers.tools.assets import fetch
from torchformers.tools.register.build import build_lr, build_optim
from torchformers.tools.register.config import DictConfig

# MindFormers scripts' import lines, verbatim (torchformers for mindformers)
# isort: off
from torchformers.tools.register import MindFormerConfig, MindFormerRegister, MindFormerModuleType
from torchformers.models.llama import LlamaTokenizer, LlamaTokenizerFast, LlamaProcessor, LlamaConfig, LlamaForCausalLM
from torchformers.models.tokenization_utils import AddedToken
from torchformers.tools import logger
from torchformers.tools.utils import str2bool, check_file
# isort: on

MODEL_CONFIG = dict(vocab_size=64, hidden_size=32, num_layers=2, num_heads=4, n_kv_heads=2, intermediate_size=48,
                    seq_length=32, compute_dtype="float32", param_init_type="float32")  # fmt: skip


def _yaml(tmp_path, with_tokenizer: bool = True):
    data = {
        "model": {
            "model_config": {"type": "LlamaConfig", **MODEL_CONFIG},
            "arch": {"type": "LlamaForCausalLM"},
        }
    }
    if with_tokenizer:
        vocab = str(fetch("llama2/tokenizer.model"))
        data["processor"] = {
            "type": "LlamaProcessor",
            "max_length": 16,
            "tokenizer": {"type": "LlamaTokenizer", "vocab_file": vocab},
        }
    path = tmp_path / "run_llama_tiny.yaml"
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    return path


# -- import lines, verbatim ------------------------------------------------------------------------


def test_register_imports():
    assert MindFormerRegister.get_cls(MindFormerModuleType.CONFIG, "LlamaConfig").__name__ == "LlamaConfig"
    assert MindFormerConfig is torchformers.MindFormerConfig


def test_llama_imports():
    assert LlamaConfig is torchformers.LlamaConfig and LlamaForCausalLM is torchformers.LlamaForCausalLM
    assert LlamaProcessor.__name__ == "LlamaProcessor"
    assert LlamaTokenizer is torchformers.LlamaTokenizer and LlamaTokenizerFast is torchformers.LlamaTokenizerFast


def test_added_token_import():
    tok = LlamaTokenizer(str(fetch("llama2/tokenizer.model")), pad_token=AddedToken("<unk>", normalized=False))
    assert AddedToken("<x>", special=True).content == "<x>"
    assert tok.pad_token == "<unk>" and tok.pad_token_id == 0


def test_logger_object_from_tools(caplog):
    assert isinstance(logger, logging.Logger)
    from torchformers.tools.logger import logger as logger_from_module
    from torchformers.tools.logger import set_log_dir

    assert logger_from_module is logger and callable(set_log_dir)
    logger.addHandler(caplog.handler)
    try:
        logger.info("hello from a MindFormers script")
    finally:
        logger.removeHandler(caplog.handler)
    assert "hello from a MindFormers script" in caplog.text


def test_tools_utils(tmp_path):
    assert str2bool("True") is True and str2bool("false") is False
    with pytest.raises(ConfigError, match="'maybe'"):
        str2bool("maybe")
    file = tmp_path / "a.yaml"
    file.write_text("a: 1\n", encoding="utf-8")
    assert check_file(str(file), "yaml") is None
    with pytest.raises(ConfigError, match="does not exist"):
        check_file(str(tmp_path / "missing.yaml"), "yaml")
    with pytest.raises(ConfigError, match="not a regular file"):
        check_file(str(tmp_path))


def test_top_level_names():
    from torchformers.generation import GenerationConfig, TextIteratorStreamer, TextStreamer
    from torchformers.models.modeling_utils import PretrainedModel
    from torchformers.models.tokenization_utils import PretrainedTokenizer
    from torchformers.models.tokenization_utils_fast import PretrainedTokenizerFast

    assert torchformers.PreTrainedModel is PretrainedModel is torchformers.PretrainedModel
    assert torchformers.PreTrainedTokenizer is PretrainedTokenizer
    assert torchformers.PreTrainedTokenizerFast is PretrainedTokenizerFast
    assert torchformers.GenerationConfig is GenerationConfig
    assert torchformers.TextStreamer is TextStreamer and torchformers.TextIteratorStreamer is TextIteratorStreamer
    names = ("AutoConfig", "AutoModel", "AutoModelForCausalLM", "AutoTokenizer", "AutoProcessor", "TrainingArguments",
             "init_context", "build_context", "ContextConfig", "ParallelContextConfig")  # fmt: skip
    for name in names:
        assert name in torchformers.__all__ and getattr(torchformers, name) is not None
    from torchformers.tools.context import ContextConfig, ParallelContextConfig, build_context, init_context

    assert init_context is torchformers.init_context and build_context is torchformers.build_context
    assert ContextConfig is torchformers.ContextConfig and ParallelContextConfig is torchformers.ParallelContextConfig


# -- Auto classes ----------------------------------------------------------------------------------


def test_auto_config_from_yaml_folder_and_name(tmp_path):
    from torchformers import AutoConfig

    path = _yaml(tmp_path, with_tokenizer=False)
    config = AutoConfig.from_pretrained(str(path), num_layers=3)
    assert type(config) is LlamaConfig and config.hidden_size == 32 and config.num_layers == 3
    assert type(AutoConfig.from_pretrained(str(tmp_path))) is LlamaConfig  # a folder with one .yaml
    hf = tmp_path / "hf"
    hf.mkdir()
    (hf / "config.json").write_text(
        '{"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 48, "num_hidden_layers": 1,'
        ' "num_attention_heads": 4, "vocab_size": 64, "intermediate_size": 64}',
        encoding="utf-8",
    )
    from_json = AutoConfig.from_pretrained(hf)
    assert type(from_json) is LlamaConfig and from_json.hidden_size == 48 and from_json.num_layers == 1
    assert AutoConfig.from_pretrained("LlamaConfig", num_layers=2).num_layers == 2
    with pytest.raises(ConfigError, match="'NoSuchConfig'.*registered configs: .*LlamaConfig"):
        AutoConfig.from_pretrained("NoSuchConfig")


def test_auto_model_from_yaml_config_and_folder(tmp_path):
    from torchformers import AutoConfig, AutoModel, AutoModelForCausalLM

    path = _yaml(tmp_path, with_tokenizer=False)
    model = AutoModelForCausalLM.from_pretrained(str(path))
    assert type(model) is LlamaForCausalLM and model.config.num_layers == 2
    built = AutoModel.from_config(AutoConfig.from_pretrained(str(path)))
    assert type(built) is LlamaForCausalLM
    by_name = AutoModelForCausalLM.from_pretrained("LlamaForCausalLM", **MODEL_CONFIG)
    assert type(by_name) is LlamaForCausalLM and by_name.config.hidden_size == 32
    saved = tmp_path / "saved"
    model.save_pretrained(saved)
    loaded = AutoModel.from_pretrained(saved)
    for name, tensor in model.state_dict().items():
        assert loaded.state_dict()[name].equal(tensor), name
    with pytest.raises(ConfigError, match="expects a PretrainedConfig"):
        AutoModel.from_config({"num_layers": 2})
    with pytest.raises(ConfigError, match="registered models: .*LlamaForCausalLM"):
        AutoModel.from_pretrained(str(tmp_path / "missing"))


def test_auto_tokenizer_and_processor(tmp_path):
    from torchformers import AutoProcessor, AutoTokenizer

    path = _yaml(tmp_path)
    tokenizer = AutoTokenizer.from_pretrained(str(path))
    assert type(tokenizer) is LlamaTokenizer and tokenizer("hello")["input_ids"][0] == 1
    saved = tmp_path / "tok"
    tokenizer.save_pretrained(str(saved))
    assert type(AutoTokenizer.from_pretrained(saved)) is LlamaTokenizer
    by_name = AutoTokenizer.from_pretrained("LlamaTokenizerFast", vocab_file=str(fetch("llama2/tokenizer.model")))
    assert type(by_name) is LlamaTokenizerFast
    processor = AutoProcessor.from_pretrained(str(path))
    assert type(processor) is LlamaProcessor and processor.max_length == 16
    assert type(processor.tokenizer) is LlamaTokenizer
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ConfigError, match="no registered tokenizer class found"):
        AutoTokenizer.from_pretrained(empty)


# -- context -----------------------------------------------------------------------------------------


def test_init_context_on_cpu():
    from torchformers import ContextConfig, ParallelContextConfig, init_context

    context = ContextConfig(mode=0, device_target="CPU", device_id=0, max_device_memory="58GB")
    assert context.device_target == "CPU" and context.max_device_memory == "58GB"
    parallel = ParallelContextConfig(parallel_mode=1, full_batch=True)
    assert parallel.full_batch is True
    assert init_context(use_parallel=False, context_config=context, parallel_config=parallel) == (0, 1)
    assert init_context(context_config={"device_target": "CPU"}) == (0, 1)
    with pytest.raises(ConfigError, match="device_target 'TPU'"):
        init_context(context_config=ContextConfig(device_target="TPU"))
    with pytest.raises(ConfigError, match="context_config=.*ContextConfig or a dict, got list"):
        init_context(context_config=["CPU"])


# -- TrainingArguments and Trainer helpers -----------------------------------------------------------


def test_training_arguments_fill_the_config(tmp_path):
    from torchformers import Trainer, TrainingArguments

    args = TrainingArguments(output_dir=str(tmp_path / "out"), device_target="CPU", seed=7, num_train_epochs=2,
                             per_device_train_batch_size=4, gradient_accumulation_steps=2, learning_rate=1e-4,
                             weight_decay=0.1, optim="AdamW", lr_scheduler_type="linear", warmup_steps=3,
                             logging_steps=5, save_steps=20, save_total_limit=2, model_parallel=2)  # fmt: skip
    trainer = Trainer(args=args)
    cfg = trainer.config
    assert cfg.output_dir == str(tmp_path / "out") and cfg.seed == 7
    runner = cfg.runner_config
    assert (runner.epochs, runner.batch_size, runner.gradient_accumulation_steps) == (2, 4, 2)
    assert cfg.optimizer.type == "AdamW" and cfg.optimizer.weight_decay == 0.1 and cfg.optimizer.betas == [0.9, 0.999]
    assert cfg.lr_schedule.type == "linear" and cfg.lr_schedule.learning_rate == 1e-4
    assert cfg.lr_schedule.warmup_steps == 3
    assert cfg.parallel_config.model_parallel == 2 and cfg.parallel_config.data_parallel == 1
    callbacks = {cb["type"]: cb for cb in cfg.callbacks}
    assert callbacks["MFLossMonitor"]["per_print_times"] == 5
    assert callbacks["CheckpointMonitor"]["save_checkpoint_steps"] == 20
    assert callbacks["CheckpointMonitor"]["keep_checkpoint_max"] == 2
    # the sections it wrote build through the registry
    schedule = build_lr(dict(cfg.lr_schedule.to_dict(), total_steps=100))
    optimizer = build_optim(cfg.optimizer.to_dict(), default_args={"params": [torch.nn.Parameter(torch.zeros(2))],
                                                                   "learning_rate": schedule})  # fmt: skip
    assert type(optimizer).__name__ == "AdamW" and type(schedule).__name__ == "LinearWithWarmUpLR"
    # a YAML value wins over the argument (MindFormers fills only what the config leaves unset)
    assert TrainingArguments(optim="fp32_adamw").convert_args_to_mindformers_config()["optimizer"]["beta2"] == 0.999
    filled = TrainingArguments(learning_rate=1e-3).convert_args_to_mindformers_config(
        {"lr_schedule": {"type": "cosine", "learning_rate": 2e-5}}
    )
    assert filled["lr_schedule"]["learning_rate"] == 2e-5 and filled["lr_schedule"]["lr_end"] == 1e-6
    with pytest.raises(ConfigError, match="optim='sgdx'.*expected a registered optimizer"):
        TrainingArguments(optim="sgdx")
    with pytest.raises(ConfigError, match="per_device_train_batch_size=0"):
        TrainingArguments(per_device_train_batch_size=0)


def test_trainer_set_configs_save_model_and_last_checkpoint(tmp_path):
    from torchformers import AutoModel, Trainer
    from torchformers.errors import TrainingError

    out = tmp_path / "out"
    model = LlamaForCausalLM(LlamaConfig(**MODEL_CONFIG))
    trainer = Trainer(args={"output_dir": str(out), "context": {"device_target": "CPU"}}, model=model)
    trainer.set_parallel_config(data_parallel=2, model_parallel=2, pipeline_stage=1, micro_batch_num=4,
                                vocab_emb_dp=False, micro_batch_interleave_num=1)  # fmt: skip
    pc = trainer.config.parallel_config
    assert (pc.data_parallel, pc.model_parallel, pc.micro_batch_num, pc.vocab_emb_dp) == (2, 2, 4, False)
    with pytest.raises(ConfigError, match="model_parallel=0"):
        trainer.set_parallel_config(model_parallel=0)
    trainer.set_recompute_config(recompute=True, select_recompute=False)
    assert trainer.config.recompute_config.recompute is True
    assert trainer.config.recompute_config.mp_comm_recompute is True

    trainer.save_model(str(tmp_path / "saved"))
    loaded = AutoModel.from_pretrained(tmp_path / "saved")
    assert all(loaded.state_dict()[k].equal(v) for k, v in model.state_dict().items())
    with pytest.raises(TrainingError, match="no model yet"):
        Trainer(args={"output_dir": str(out), "context": {"device_target": "CPU"}}).save_model()

    assert trainer.get_last_checkpoint() is None
    folder = out / "checkpoint" / "rank_0"
    folder.mkdir(parents=True)
    for name in ("CKP_rank_0-1_2.safetensors", "CKP_rank_0-1_4.safetensors"):
        (folder / name).write_bytes(b"x")
        (folder / f"{name}.json").write_text("{}", encoding="utf-8")
    (folder / "meta.json").write_text('{"last_ckpt_file": "CKP_rank_0-1_2.safetensors"}', encoding="utf-8")
    assert trainer.get_last_checkpoint() == str(folder / "CKP_rank_0-1_2.safetensors")


# -- nested YAML sections and LlamaConfig.parallel_config --------------------------------------------


def test_nested_yaml_sections_read_as_attributes(tmp_path):
    config = MindFormerConfig(str(_yaml(tmp_path, with_tokenizer=False)))
    assert config.model.model_config.num_layers == 2
    assert config.model.arch.type == "LlamaForCausalLM"
    assert isinstance(config.model.model_config, DictConfig)  # attribute access at every level, as MindFormers nests


def test_llama_config_parallel_config_object_and_round_trip(tmp_path):
    default = LlamaConfig().parallel_config
    assert default.data_parallel == default.model_parallel == default.pipeline_stage == 1
    assert default.vocab_emb_dp is True
    config = LlamaConfig(**MODEL_CONFIG, parallel_config={"data_parallel": 2, "model_parallel": 4})
    assert config.parallel_config.model_parallel == 4 and config.parallel_config.micro_batch_num == 1
    config.save_pretrained(tmp_path / "a", save_name="tiny")
    saved = json.loads((tmp_path / "a" / "config.json").read_text(encoding="utf-8"))
    assert saved["parallel_config"]["model_parallel"] == 4
    for source in (tmp_path / "a" / "config.json", tmp_path / "a" / "tiny.yaml"):
        again = LlamaConfig.from_pretrained(source)
        assert again.parallel_config == config.parallel_config and again.parallel_config.data_parallel == 2
    assert "parallel_config" not in LlamaConfig(**MODEL_CONFIG).to_diff_dict()
    with pytest.raises(ConfigError, match="parallel_config.model_parallel is 0; expected a positive integer"):
        LlamaConfig(parallel_config={"model_parallel": 0})
    with pytest.raises(ConfigError, match="parallel_config must be a mapping.*got str"):
        LlamaConfig(parallel_config="dp2")

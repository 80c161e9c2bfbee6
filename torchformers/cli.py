"""The `run_mindformer.py` launcher: parse arguments, assemble the config, dispatch by run mode.

Arguments, their order of merging and their meaning follow MindFormers r1.5 `run_mindformer.py`
(spec §1). Relative `--config` and `--register_path` resolve against the current directory first,
then the repository root. Free-form overrides `--a.b.c value` / `--a.b.c=value` change any key whose
parents exist. A user's mistake ends the run with one line on stderr and exit status 2; set
`TORCHFORMERS_DEBUG=1` to see the traceback as well.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping, Sequence

import torchformers  # noqa: F401  (registers the library's classes)
from torchformers.errors import ConfigError, TorchformersError, run_cli
from torchformers.tools.context import build_context
from torchformers.tools.logger import logger
from torchformers.tools.register.build import build_trainer
from torchformers.tools.register.config import MindFormerConfig, parse_value
from torchformers.tools.register.paths import REPO_ROOT, import_register_path, resolve_path, use_register_path
from torchformers.tools.register.register import MindFormerModuleType, MindFormerRegister
from torchformers.tools.register.template import RUN_MODES, check_strict_sections
from torchformers.utils import str2bool

__all__ = [
    "REPO_ROOT",
    "build_parser",
    "config_from_args",
    "import_register_path",
    "main",
    "resolve_path",
    "use_register_path",
]


def str2bool_or_str(text: str) -> bool | str:
    """`--resume_training`: true/false, or the name of the checkpoint to resume from."""
    return text.lower() == "true" if text.lower() in ("true", "false") else text


class ActionDict(argparse.Action):
    """`--options a.b=1 c=x`: collects `key=value` pairs (values parsed like free-form overrides)."""

    def __call__(self, parser, namespace, values, option_string=None):
        options = {}
        for item in values:
            if "=" not in item:
                parser.error(f"--options takes key=value pairs, got {item!r}")
            key, value = item.split("=", 1)
            options[key] = parse_value(value)
        setattr(namespace, self.dest, options)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="run_mindformer.py",
        description="Run training, finetuning, evaluation or inference from one YAML file. "
        "Any key can also be set with --a.b.c value (or --a.b.c=value).",
    )
    add = p.add_argument
    add(
        "--config",
        required=True,
        help="YAML task config; relative paths try the current directory, then the repository root",
    )
    add(
        "--mode", type=int, help="MindSpore graph(0)/pynative(1) mode: accepted for compatibility, PyTorch runs eagerly"
    )
    add("--device_id", type=int, help="GPU index for single-device runs (context.device_id); torchrun sets it per rank")
    add(
        "--device_target",
        type=str,
        help="CPU or GPU (context.device_target); default: GPU when available; Ascend runs on GPU/CPU (logged)",
    )
    add("--run_mode", type=str, help=f"one of {', '.join(RUN_MODES)}")
    add("--do_eval", type=str2bool, help="evaluate on eval_dataset while training (true/false)")
    add("--train_dataset_dir", type=str, help="training data folder or file (train_dataset.data_loader.dataset_dir)")
    add("--eval_dataset_dir", type=str, help="evaluation data folder or file (eval_dataset.data_loader.dataset_dir)")
    add(
        "--predict_data",
        type=str,
        nargs="+",
        help="prompt(s) for predict: several values are a batch, a file gives one prompt per line",
    )
    add("--modal_type", type=str, nargs="+", help="multimodal inputs (text/image/video): not supported, refused")
    add("--predict_batch_size", type=int, help="prompts per generate() call in predict")
    add("--adapter_id", type=str, nargs="+", help="adapter ids, used only with pet_config.pet_type slora")
    add(
        "--load_checkpoint",
        type=str,
        help="checkpoint file or folder to load (safetensors, .ckpt, .bin/.pt, HF folder, GGUF, a folder of rank_N/)",
    )
    add(
        "--src_strategy_path_or_dir",
        type=str,
        help="MindSpore strategy file (or folder of them) of load_checkpoint's rank_N/ sliced checkpoints",
    )
    add(
        "--auto_trans_ckpt",
        type=str2bool,
        help="merge load_checkpoint's rank_N/ slices with src_strategy_path_or_dir while loading (true/false)",
    )
    add("--transform_process_num", type=int, help="processes for checkpoint transformation: accepted for compatibility")
    add(
        "--only_save_strategy",
        type=str2bool,
        help="save the sharding strategy and exit: not supported, refused when true",
    )
    add(
        "--resume_training",
        type=str2bool_or_str,
        help="resume from the last checkpoint (true/false) or from the named checkpoint file",
    )
    add(
        "--strategy_load_checkpoint",
        type=str,
        help="strategy file to load (parallel.strategy_ckpt_load_file): accepted for compatibility",
    )
    add("--remote_save_url", type=str, help="ModelArts/OBS upload URL: accepted, no effect (logged); see output_dir")
    add("--seed", type=int, help="global random seed")
    add("--use_parallel", type=str2bool, help="run distributed under torchrun with parallel_config (true/false)")
    add("--profile", type=str2bool, help="MindSpore profiler switch: accepted, no effect (logged)")
    add("--options", nargs="+", action=ActionDict, help="key.sub=value pairs merged into the config")
    add("--epochs", type=int, help="training epochs (runner_config.epochs)")
    add("--batch_size", type=int, help="per-data-parallel-rank batch size (runner_config.batch_size)")
    add(
        "--gradient_accumulation_steps",
        type=int,
        help="micro-batches per optimizer step (runner_config.gradient_accumulation_steps)",
    )
    add("--sink_mode", type=str2bool, help="MindSpore data sinking: accepted for compatibility, no effect")
    add("--num_samples", type=int, help="use only this many samples of the train and eval data sets")
    add("--output_dir", type=str, help="root folder for logs, checkpoints and results (default ./output)")
    add(
        "--register_path",
        type=str,
        help="folder of external code named by auto_register in the YAML (sets REGISTER_PATH)",
    )
    add("--do_sample", type=str2bool, help="sample instead of greedy decoding (model.model_config.do_sample)")
    add(
        "--quantization",
        type=str,
        choices=("int8", "int4", "gguf"),
        help="quantize the linear layers for inference: int8 per channel or int4 in groups of 32; gguf keeps "
        "a .gguf load_checkpoint's quantized blocks (model.model_config.quantization_config)",
    )
    add("--host", type=str, help="run_mode serve: address to listen on (serve.host, default 127.0.0.1)")
    add("--port", type=int, help="run_mode serve: port to listen on (serve.port, default 8000)")
    add(
        "--api_key",
        type=str,
        help="run_mode serve: clients must send 'Authorization: Bearer KEY' (serve.api_key; "
        "or the TORCHFORMERS_API_KEY environment variable)",
    )
    add(
        "--trust_remote_code",
        type=str2bool,
        help="accepted for compatibility; external code is loaded only from --register_path",
    )
    return p


def parse_overrides(extra: Sequence[str]) -> list[tuple[str, object]]:
    """Turn leftover `--a.b c` / `--a.b=c` arguments into (dotted key, parsed value) pairs."""
    items: list[str] = []
    for arg in extra:
        if arg.startswith("--") and "=" in arg:
            items.extend(arg.split("=", 1))
        else:
            items.append(arg)
    if len(items) % 2:
        raise ConfigError(f"overrides must come as '--key value' pairs; got {' '.join(extra)!r}")
    pairs = []
    for key, value in zip(items[0::2], items[1::2]):
        if not key.startswith("--") or len(key) <= 2:
            raise ConfigError(
                f"override {key!r} must start with '--' and name a dotted key, e.g. --model.model_config.seq_length"
            )
        pairs.append((key[2:], parse_value(value)))
    return pairs


def apply_override(config: MindFormerConfig, dotted: str, value) -> None:
    node = config
    keys = dotted.split(".")
    for i, key in enumerate(keys[:-1]):
        if not isinstance(node, Mapping) or key not in node or not isinstance(node[key], Mapping):
            parent = ".".join(keys[:i]) or "the top level"
            raise ConfigError(f"override --{dotted}: {key!r} is not a key of {parent} in {config.source_file}")
        node = node[key]
    config.merge_from_dict({dotted: value})


def config_from_args(argv: Sequence[str] | None = None) -> MindFormerConfig:
    """Parse `argv` and return the finished config (nothing is built or run)."""
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if args.register_path is not None:
        use_register_path(args.register_path)
    config_path = resolve_path(args.config, "--config")
    kwargs = {"run_mode": args.run_mode} if args.run_mode is not None else {}
    config = MindFormerConfig(str(config_path), **kwargs)

    def set_if(value, dotted: str) -> None:
        if value is not None:
            config.set_value(dotted, value)

    set_if(args.mode, "context.mode")
    set_if(args.device_id, "context.device_id")
    set_if(args.device_target, "context.device_target")
    set_if(args.do_eval, "do_eval")
    set_if(args.load_checkpoint, "load_checkpoint")
    set_if(args.src_strategy_path_or_dir, "src_strategy_path_or_dir")
    set_if(args.auto_trans_ckpt, "auto_trans_ckpt")
    set_if(args.transform_process_num, "transform_process_num")
    set_if(args.only_save_strategy, "only_save_strategy")
    set_if(args.resume_training, "resume_training")
    set_if(args.strategy_load_checkpoint, "parallel.strategy_ckpt_load_file")
    set_if(args.remote_save_url, "remote_save_url")
    set_if(args.seed, "seed")
    set_if(args.use_parallel, "use_parallel")
    set_if(args.profile, "profile")
    set_if(args.do_sample, "model.model_config.do_sample")
    if args.quantization is not None:
        config.set_value("model.model_config.quantization_config", {"quant_method": args.quantization})
    set_if(args.trust_remote_code, "trust_remote_code")
    set_if(args.predict_batch_size, "predict_batch_size")
    if args.adapter_id is not None and config.get_value("model.model_config.pet_config.pet_type") == "slora":
        config.adapter_id = args.adapter_id
    if args.options:
        config.merge_from_dict(args.options)

    if config.run_mode not in RUN_MODES:
        raise ConfigError(
            f"run_mode is {config.run_mode!r} (from --run_mode or {config_path}); "
            f"expected one of {', '.join(RUN_MODES)}"
        )
    if args.modal_type is not None:
        raise ConfigError("--modal_type: multimodal inputs are not supported; pass text prompts with --predict_data")
    if config.only_save_strategy:
        raise ConfigError(
            "only_save_strategy: there is no strategy file to save; "
            "torch.distributed.checkpoint stores layouts with the checkpoint"
        )

    for value, section in ((args.train_dataset_dir, "train_dataset"), (args.eval_dataset_dir, "eval_dataset")):
        if value is not None:
            if not isinstance(config.get(section), Mapping):
                raise ConfigError(f"--{section}_dir given but {config_path} has no '{section}' section")
            config.set_value(f"{section}.data_loader.dataset_dir", value)
    if config.run_mode == "predict" and args.predict_data is not None:
        data = args.predict_data
        if len(data) > 1:
            config.input_data = [d.replace("\\n", "\n") for d in data]
        else:
            if os.path.isdir(data[0]):
                raise ConfigError(
                    f"--predict_data {data[0]!r} is a folder; image folders are not supported, "
                    "pass a text file or prompts"
                )
            config.input_data = data[0].replace("\\n", "\n")
    set_if(args.epochs, "runner_config.epochs")
    set_if(args.batch_size, "runner_config.batch_size")
    set_if(args.gradient_accumulation_steps, "runner_config.gradient_accumulation_steps")
    set_if(args.sink_mode, "runner_config.sink_mode")
    if args.num_samples is not None:
        for section in ("train_dataset", "eval_dataset"):
            if isinstance(config.get_value(f"{section}.data_loader"), Mapping):
                config.set_value(f"{section}.data_loader.num_samples", args.num_samples)
    set_if(args.output_dir, "output_dir")
    set_if(args.host, "serve.host")
    set_if(args.port, "serve.port")
    set_if(args.api_key, "serve.api_key")

    for dotted, value in parse_overrides(extra):
        apply_override(config, dotted, value)
    check_strict_sections(config, source=config_path)
    return config


# The keys of MindSpore's `context` and `parallel` blocks that mean something here (`device_target` / `device_id`
# pick the device, `enable_parallel_optimizer` shards the optimizer); the others have no PyTorch counterpart.
_KEYS_USED = {"context": ("device_target", "device_id"), "parallel": ("enable_parallel_optimizer",)}


# MindSpore-only top-level switches, each with the keys that only matter when it is on: MindData's dataset
# autotuning, the MindSpore profiler, layer-wise learning-rate decay and batch-size LR scaling, and the
# Ascend CANN / precision-sync options. At their inert values they ask for nothing, in MindFormers either;
# a switch that is on is named in the no-effect line together with its companions.
_TOP_LEVEL_SWITCHES = {
    "auto_tune": ("filepath_prefix", "autotune_per_step"),
    "profile": (
        "profile_start_step", "profile_stop_step", "init_start_profile", "profile_communication", "profile_memory",
        "profile_rank_ids", "profile_pipeline", "profile_level", "mstx",
    ),
    "layer_scale": ("layer_decay",),
    "lr_scale": ("lr_scale_factor",),
    "exclude_cann_cpu": (),
    "train_precision_sync": (),
    "infer_precision_sync": (),
}  # fmt: skip


def _top_level_no_effect(config: MindFormerConfig) -> list[str]:
    keys = []
    for switch, companions in _TOP_LEVEL_SWITCHES.items():
        if config.get(switch):
            keys.append(f"{switch} ({config.get(switch)!r})")
            keys += [k for k in companions if k in config]
    if (config.get("micro_batch_interleave_num") or 1) > 1:  # MindSpore's interleaved micro-batches (model parallel)
        keys.append(f"micro_batch_interleave_num ({config.micro_batch_interleave_num!r})")
    return keys


def _model_config_no_effect(config: MindFormerConfig) -> list[str]:
    """`model.model_config` keys the YAML sets that its config class lists as Ascend-only (`no_effect_keys`)."""
    model_config = config.get_value("model.model_config")
    if not isinstance(model_config, Mapping) or not isinstance(model_config.get("type"), str):
        return []
    if not MindFormerRegister.is_exist(MindFormerModuleType.CONFIG, model_config["type"]):
        return []
    cls = MindFormerRegister.get_cls(MindFormerModuleType.CONFIG, model_config["type"])
    return [f"model.model_config.{k}" for k in getattr(cls, "no_effect_keys", ()) if k in model_config]


def log_no_effect(config: MindFormerConfig) -> None:
    """One log line naming the keys MindFormers gives a meaning that PyTorch has no counterpart for: the
    `context` and `parallel` blocks' MindSpore keys, the top-level MindSpore switches that are on, and a
    `remote_save_url`."""
    keys = []
    for section, used in _KEYS_USED.items():
        block = config.get(section)
        if isinstance(block, Mapping):
            keys += [f"{section}.{k}" for k in block if k not in used]
    keys += _top_level_no_effect(config)
    keys += _model_config_no_effect(config)
    if config.get("remote_save_url"):
        keys.append(f"remote_save_url ({config.remote_save_url!r}: nothing is uploaded to ModelArts/OBS)")
    if keys:
        logger.info("no effect on PyTorch, accepted as in MindFormers: %s", ", ".join(keys))


def single_process_notice(config: MindFormerConfig) -> None:
    """`use_parallel: True` outside torchrun: run as one process and say how to launch it distributed."""
    if config.get("use_parallel") and "WORLD_SIZE" not in os.environ:
        logger.info(
            "use_parallel is %r but this is not a distributed launch (WORLD_SIZE unset): running as one process; "
            "launch with `torchrun --nproc_per_node N run_mindformer.py ...` to run distributed",
            config.use_parallel,  # a YAML's `use_parallel: Flase` is a true string, as in MindFormers
        )
        config.use_parallel = False


def run(config: MindFormerConfig):
    """Build the context and the task trainer named by `trainer.type`, then run the run mode."""
    single_process_notice(config)
    build_context(config)
    log_no_effect(config)
    if not isinstance(config.trainer, Mapping) or "type" not in config.trainer:
        raise ConfigError(
            f"{config.source_file}: the config needs a 'trainer' section with a 'type' "
            "(e.g. CausalLanguageModelingTrainer)"
        )
    if config.run_mode in ("serve", "chat"):
        # imported here: the web stack (FastAPI, uvicorn) loads only for the run modes that use it
        from torchformers.serve.launcher import chat_from_config, serve_from_config

        return (serve_from_config if config.run_mode == "serve" else chat_from_config)(config)
    trainer = build_trainer(config.trainer)
    if config.run_mode in ("train", "finetune"):
        return trainer.train(config=config)
    if config.run_mode == "eval":
        return trainer.evaluate(config=config, eval_checkpoint=config.load_checkpoint)
    return trainer.predict(config=config, input_data=config.input_data, batch_size=config.predict_batch_size)


# Beside the error tree: what a user's input makes PyTorch, numpy or the file system raise.
USER_ERRORS = (TorchformersError, ValueError, KeyError, FileNotFoundError, NotImplementedError)


def main(argv: Sequence[str] | None = None) -> int:
    """The launcher: a user's mistake is one line on stderr and exit status 2 (`errors.run_cli`)."""
    return run_cli(lambda: run(config_from_args(argv)), errors=USER_ERRORS)

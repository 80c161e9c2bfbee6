"""Run-mode templates: defaults filled in, strict sections checked (MindFormers r1.5 `template.py`).

For each section the run mode selects, class defaults are filled in and YAML values override them.
Strict sections (`parallel_config`, `recompute_config`, `swap_config`, `moe_config`, `runner_config`, `serve`,
`monitor_config`) reject unknown keys, naming the file, the dotted key and the closest valid keys.
Sections given as a whole (`runner_wrapper`, `optimizer`, `lr_schedule`, `metric`) are not merged
with the default block when present: the user's block replaces it, as in MindFormers.
Default callbacks are merged by type: a user entry of a default type takes that slot.
"""

from __future__ import annotations

import copy
import difflib
from pathlib import Path

from torchformers.errors import ConfigError
from torchformers.tools.logger import logger

__all__ = ["GENERAL_DEFAULTS", "RUN_MODES", "STRICT_DEFAULTS", "apply_template", "check_strict_sections"]

RUN_MODES = ("train", "finetune", "eval", "predict", "serve", "chat")

GENERAL_DEFAULTS: dict = {
    "seed": 1,
    "output_dir": "./output",
    "run_mode": None,
    "use_parallel": False,
    "resume_training": False,
    "load_checkpoint": "",
    "load_ckpt_format": "ckpt",
    "auto_trans_ckpt": False,
    "transform_process_num": 1,
    "src_strategy_path_or_dir": "",
    "only_save_strategy": False,
    "load_ckpt_async": False,
    "use_legacy": True,
    "do_eval": False,
    "eval_step_interval": 100,
    "eval_epoch_interval": -1,
    "ignore_data_skip": False,
    "data_skip_steps": None,
    "profile": False,
    "profile_communication": False,
    "profile_memory": True,
    "init_start_profile": False,
    "profile_start_step": 1,
    "profile_stop_step": 10,
    "profile_rank_ids": None,
    "profile_pipeline": False,
    "profile_level": 1,
    "mstx": False,
    "layer_scale": False,
    "layer_decay": 0.65,
    "lr_scale": False,
    "lr_scale_factor": 256,
    "micro_batch_interleave_num": 1,
    "remote_save_url": None,
    "save_file": None,
    "input_data": None,
    "predict_batch_size": None,
    "adapter_id": None,
    "exclude_cann_cpu": False,
    "train_precision_sync": None,
    "infer_precision_sync": None,
    "postprocess_use_numpy": False,
}

STRICT_DEFAULTS: dict[str, dict] = {
    "parallel_config": {
        "data_parallel": 1,
        "model_parallel": 1,
        "context_parallel": 1,
        "expert_parallel": 1,
        "pipeline_stage": 1,
        "micro_batch_num": 1,
        "seq_split_num": 1,
        "use_seq_parallel": False,
        "optimizer_shard": None,
        "gradient_aggregation_group": 4,
        "vocab_emb_dp": True,
        "context_parallel_algo": "colossalai_cp",
        "ulysses_degree_in_cp": 1,
        "mem_coeff": 0.1,
    },
    "recompute_config": {
        "recompute": False,
        "select_recompute": False,
        "parallel_optimizer_comm_recompute": False,
        "select_comm_recompute": False,
        "mp_comm_recompute": True,
        "recompute_slice_activation": False,
        "select_recompute_exclude": False,
        "select_comm_recompute_exclude": False,
    },
    "swap_config": {"swap": False, "layer_swap": None, "op_swap": None, "default_prefetch": 1},
    "runner_config": {
        "batch_size": 1,
        "epochs": 1,
        "sink_mode": 1,
        "sink_size": 1,
        "gradient_accumulation_steps": 1,
        "num_classes": 1,
        "stop_step": 0,
    },
    "monitor_config": {
        "monitor_on": False,
        "dump_path": "",
        "target": None,
        "invert": False,
        "step_interval": 1,
        "local_loss_format": None,
        "local_norm_format": None,
        "device_local_norm_format": None,
        "optimizer_state_format": None,
        "weight_state_format": None,
        "throughput_baseline": None,
        "print_struct": False,
    },
    "moe_config": {
        "expert_num": 1,
        "capacity_factor": 1.1,
        "aux_loss_factor": 0.05,
        "num_experts_chosen": 1,
        "expert_group_size": None,
        "group_wise_a2a": False,
        "comp_comm_parallel": False,
        "comp_comm_parallel_degree": 2,
        "save_token_distribution": False,
        "cur_layer": 0,
        "enable_cold_hot_expert": False,
        "update_step": 10000,
        "hot_expert_num": 0,
        "cold_token_percent": 1.0,
        "moe_module_name": "",
        "routing_policy": "TopkRouterV1",
        "norm_topk_prob": True,
        "enable_sdrop": False,
        "use_fused_ops_topkrouter": False,
        "router_dense_type": "float32",
        "shared_expert_num": 0,
        "use_shared_expert_gating": False,
        "max_router_load": 131072,
        "topk_method": "greedy",
        "topk_group": None,
        "n_group": None,
        "first_k_dense_replace": True,
        "moe_intermediate_size": 1407,
        "routed_scaling_factor": 1.0,
        "aux_loss_types": None,
        "aux_loss_factors": None,
        "z_loss_factor": 0.0,
        "balance_via_topk_bias": False,
        "topk_bias_update_rate": 0.0,
        "use_allgather_dispatcher": False,
        "moe_shared_expert_overlap": False,
        "expert_model_parallel": None,
        "use_gating_sigmoid": False,
        "enable_deredundency": False,
        "npu_nums_per_device": 1,
        "use_gmm": False,
        "enable_gmm_safe_tokens": False,
        "use_fused_ops_permute": False,
        "callback_moe_droprate": False,
    },
    # run_mode serve / chat: the OpenAI-compatible server and the engine under it (docs/serving.md)
    "serve": {
        "host": "127.0.0.1",
        "port": 8000,
        "api_key": None,
        "served_model_name": None,
        "max_num_seqs": 16,
        "max_num_batched_tokens": 512,
        "block_size": 16,
        "num_blocks": None,
        "max_model_len": None,
        "enable_prefix_caching": True,
        "max_queue": 256,
        "max_n": 8,
    },
}

LENIENT_DEFAULTS: dict[str, dict] = {
    "context": {"mode": 0, "device_target": None, "device_id": 0, "max_device_memory": "58GB", "max_call_depth": 10000},
    "parallel": {
        "parallel_mode": 1,
        "full_batch": True,
        "search_mode": "sharding_propagation",
        "enable_parallel_optimizer": False,
        "gradients_mean": False,
        "enable_alltoall": False,
        "strategy_ckpt_save_file": "./ckpt_strategy.ckpt",
    },
}

# Sections replaced whole when present (MindFormers' SpecConfig).
SPEC_DEFAULTS: dict[str, dict] = {
    "runner_wrapper": {
        "type": "MFTrainOneStepCell",
        "use_clip_grad": True,
        "scale_sense": {
            "type": "DynamicLossScaleUpdateCell",
            "loss_scale_value": 65536,
            "scale_factor": 2,
            "scale_window": 1000,
        },
    },
    "optimizer": {"type": "AdamW", "betas": [0.9, 0.999], "learning_rate": 5.0e-5, "eps": 1.0e-8, "weight_decay": 0.0},
    "lr_schedule": {
        "type": "CosineWithWarmUpLR",
        "learning_rate": 5.0e-5,
        "lr_end": 0.0,
        "warmup_ratio": 0.0,
        "total_steps": -1,
    },
    "metric": {"type": "PerplexityMetric"},
}

DEFAULT_CALLBACKS = [{"type": "MFLossMonitor"}, {"type": "ObsMonitor"}]
DEFAULT_EVAL_CALLBACKS = [{"type": "ObsMonitor"}]

_GENERAL_SECTIONS = ("runner_config", "context", "parallel", "trainer", "model", "moe_config", "parallel_config")
_TRAIN_SECTIONS = (
    "recompute_config",
    "swap_config",
    "runner_wrapper",
    "optimizer",
    "lr_schedule",
    "metric",
    "train_dataset",
    "train_dataset_task",
    "callbacks",
    "monitor_config",
)
_EVAL_SECTIONS = ("eval_dataset", "eval_dataset_task", "eval_callbacks", "metric")
_SECTIONS_BY_MODE = {
    "train": _TRAIN_SECTIONS,
    "finetune": _TRAIN_SECTIONS,
    "eval": _EVAL_SECTIONS,
    "predict": ("processor",),
    "serve": ("processor", "serve"),
    "chat": ("processor", "serve"),
}
_REQUIRED_KEYS = {"trainer": ("type",), "model": ("model_config", "arch")}


def _config_error(source: Path | None, message: str):
    where = f"{source}: " if source is not None else ""
    return ConfigError(where + message)


def _check_strict(section: str, values, defaults: dict, source: Path | None) -> dict:
    if values is None:
        return copy.deepcopy(defaults)
    if not isinstance(values, dict):
        raise _config_error(source, f"'{section}' must be a mapping, got {values!r}")
    for key in values:
        if key not in defaults:
            close = difflib.get_close_matches(key, list(defaults), n=3, cutoff=0.5)
            hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
            raise _config_error(
                source,
                f"unknown key '{section}.{key}'{hint} (valid keys of '{section}': {', '.join(defaults)})",
            )
    return {**copy.deepcopy(defaults), **values}


def _merge_callbacks(user, defaults: list[dict]) -> list:
    merged = copy.deepcopy(defaults)
    for entry in user or []:
        slot = next(
            (i for i, d in enumerate(merged) if isinstance(entry, dict) and d.get("type") == entry.get("type")), None
        )
        if slot is None:
            merged.append(entry)
        else:
            merged[slot] = entry
    return merged


def apply_template(cfg: dict, source: Path | None = None) -> dict:
    """Fill defaults for the sections the run mode needs and validate strict sections."""
    run_mode = cfg.get("run_mode")
    if run_mode is not None and run_mode not in RUN_MODES:
        raise _config_error(source, f"run_mode is {run_mode!r}; expected one of {', '.join(RUN_MODES)}")
    out = dict(cfg)
    for key, value in GENERAL_DEFAULTS.items():
        out.setdefault(key, copy.deepcopy(value))
    selected = set(_GENERAL_SECTIONS)
    if run_mode is not None:
        selected.update(_SECTIONS_BY_MODE[run_mode])
        if run_mode in ("train", "finetune") and cfg.get("do_eval"):
            selected.update(("eval_dataset", "eval_dataset_task", "eval_callbacks"))
    for section, defaults in STRICT_DEFAULTS.items():
        # strict sections are checked whenever present, so a typo never waits for another run mode
        if section in out or section in selected:
            out[section] = _check_strict(section, out.get(section), defaults, source)
    for section, defaults in LENIENT_DEFAULTS.items():
        if section in selected:
            given = out.get(section) or {}
            if not isinstance(given, dict):
                raise _config_error(source, f"'{section}' must be a mapping, got {given!r}")
            out[section] = {**copy.deepcopy(defaults), **given}
    for section, defaults in SPEC_DEFAULTS.items():
        if section in selected and out.get(section) is None:
            out[section] = copy.deepcopy(defaults)
    if "callbacks" in selected:
        out["callbacks"] = _merge_callbacks(out.get("callbacks"), DEFAULT_CALLBACKS)
    if "eval_callbacks" in selected:
        out["eval_callbacks"] = _merge_callbacks(out.get("eval_callbacks"), DEFAULT_EVAL_CALLBACKS)
    for section, required in _REQUIRED_KEYS.items():
        if section in out and out[section] is not None:
            if not isinstance(out[section], dict):
                raise _config_error(source, f"'{section}' must be a mapping, got {out[section]!r}")
            for key in required:
                if key not in out[section]:
                    raise _config_error(source, f"'{section}' needs the key '{section}.{key}'")
    if run_mode is not None:
        unused = [
            k
            for k in ("train_dataset", "eval_dataset", "processor", "optimizer", "lr_schedule")
            if k in cfg and k not in selected
        ]
        if unused:
            logger.debug("sections %s are not used for run_mode %s", ", ".join(unused), run_mode)
    return out


def check_strict_sections(cfg, source: Path | None = None) -> None:
    """Check the strict sections of a finished config again (after command-line overrides)."""
    for section, defaults in STRICT_DEFAULTS.items():
        if cfg.get(section) is not None:
            _check_strict(section, cfg[section], defaults, source)

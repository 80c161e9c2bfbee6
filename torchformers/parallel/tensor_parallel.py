"""Tensor (model) parallelism of a Llama-shaped model with DTensor `parallelize_module`.

Megatron-style sharding as MindFormers' `model_parallel` (spec §10.1) and torchtitan's
`apply_tp`: column-wise `wq`/`wk`/`wv`/`w1`/`w3`, row-wise `wo`/`w2`; with `vocab_emb_dp: False`
the embedding is split over the vocabulary (rows) and `lm_head` column-wise (over the vocabulary),
its logits gathered before the loss; with `use_seq_parallel` the norms and residual stream are split
over the sequence (`SequenceParallel`) and gathered before attention and the FFN.

Every parameter that is not split becomes a replicated DTensor on the same mesh (`ReplicateParallel`),
so that gradient clipping, checkpoints and FSDP see one kind of tensor. The attention modules keep
their code; only their head counts are set to the local ones (`n_heads / tp`, `n_kv_heads / tp`),
which is what their `view` calls and the KV cache read.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.tensor import DTensor, Replicate, Shard, distribute_module, distribute_tensor
from torch.distributed.tensor.parallel import (
    ColwiseParallel,
    ParallelStyle,
    PrepareModuleInput,
    RowwiseParallel,
    SequenceParallel,
    parallelize_module,
)

from torchformers.tools.register.config import ConfigError

__all__ = ["ReplicateParallel", "VocabParallelEmbedding", "apply_tensor_parallel", "check_tp_divisibility"]


def _to_replicate(x, mesh: DeviceMesh):
    if isinstance(x, DTensor):
        return x.redistribute(mesh, (Replicate(),))
    return DTensor.from_local(x, mesh, (Replicate(),), run_check=False)


class ReplicateParallel(ParallelStyle):
    """Keep the module whole on every rank, with its parameters as replicated DTensors.

    Inputs are taken as replicated (a sequence-sharded DTensor is gathered first) and the output is
    returned as a plain local tensor, so the module's code runs unchanged.
    """

    def _apply(self, module: nn.Module, device_mesh: DeviceMesh) -> nn.Module:
        def partition(name, mod, mesh):
            for key, param in list(mod.named_parameters(recurse=False)):
                if not isinstance(param, DTensor):
                    replicated = distribute_tensor(param.data, mesh, [Replicate()], src_data_rank=self.src_data_rank)
                    mod.register_parameter(key, nn.Parameter(replicated, requires_grad=param.requires_grad))

        def input_fn(mod, inputs, mesh):
            return tuple(_to_replicate(x, mesh) if isinstance(x, torch.Tensor) else x for x in inputs)

        def output_fn(mod, output, mesh):
            return output.to_local() if isinstance(output, DTensor) else output

        return distribute_module(module, device_mesh, partition, input_fn, output_fn)


class VocabParallelEmbedding(ParallelStyle):
    """Split an embedding table `(vocab, hidden)` by rows; each rank looks up its vocabulary range and the
    partial results are summed (DTensor's masked-partial embedding), then laid out as `output_layout`."""

    def __init__(self, weight_name: str = "embedding_weight", output_layout=None, use_local_output: bool = True):
        super().__init__()
        self.weight_name = weight_name
        self.output_layout = output_layout or Replicate()
        self.use_local_output = use_local_output

    def _apply(self, module: nn.Module, device_mesh: DeviceMesh) -> nn.Module:
        weight_name = self.weight_name

        def partition(name, mod, mesh):
            param = getattr(mod, weight_name, None)
            if isinstance(param, nn.Parameter) and not isinstance(param, DTensor):
                sharded = distribute_tensor(param.data, mesh, [Shard(0)], src_data_rank=self.src_data_rank)
                mod.register_parameter(weight_name, nn.Parameter(sharded, requires_grad=param.requires_grad))

        def input_fn(mod, inputs, mesh):
            ids = inputs[0]
            if not isinstance(ids, DTensor):
                ids = DTensor.from_local(ids, mesh, (Replicate(),), run_check=False)
            return (ids, *inputs[1:])

        def output_fn(mod, output, mesh):
            output = output.redistribute(mesh, (self.output_layout,))
            return output.to_local() if self.use_local_output else output

        return distribute_module(module, device_mesh, partition, input_fn, output_fn)


def check_tp_divisibility(config, tp: int, vocab_parallel: bool, source: str = "the config") -> None:
    """Heads, KV heads and FFN width must split evenly over `model_parallel` ranks (vocabulary too when split)."""
    checks = {
        "num_heads": getattr(config, "num_heads", None),
        "n_kv_heads": getattr(config, "kv_heads", None) or getattr(config, "n_kv_heads", None),
        "ffn_hidden_size": getattr(config, "ffn_hidden_size", None),
    }
    if vocab_parallel:
        checks["vocab_size"] = getattr(config, "vocab_size", None)
    for key, value in checks.items():
        if value is not None and value % tp:
            raise ConfigError(
                f"{source}: parallel_config.model_parallel is {tp} but model_config.{key} is {value}, "
                f"which does not split evenly over {tp} ranks"
            )


def apply_tensor_parallel(
    model: nn.Module,
    tp_mesh: DeviceMesh,
    *,
    sequence_parallel: bool = False,
    vocab_parallel: bool = False,
    loss_parallel: bool = False,
    src_data_rank: int | None = 0,
) -> nn.Module:
    """Shard `model` (a `LlamaForCausalLM`: `model.tok_embeddings`, `model.layers`, `model.norm_out`,
    `lm_head`) over `tp_mesh` in place. Modules a pipeline stage does not hold (None) are skipped.
    `src_data_rank=None` takes each rank's own copy (identical copies, or meta tensors) without communication;
    0 scatters rank 0's weights."""
    tp = tp_mesh.size()
    check_tp_divisibility(model.config, tp, vocab_parallel)
    base = model.model
    sp = sequence_parallel
    seq = Shard(1)
    # between blocks the residual stream is a sequence-sharded DTensor under SP, a plain tensor otherwise
    if base.tok_embeddings is not None:
        style = (
            VocabParallelEmbedding(output_layout=seq if sp else Replicate(), use_local_output=not sp)
            if vocab_parallel
            else ReplicateParallel()
        )
        if sp and not vocab_parallel:
            style = _ReplicateThenShardSeq()
        parallelize_module(base.tok_embeddings, tp_mesh, style, src_data_rank=src_data_rank)
    for layer in _layers(base):
        plan = {
            "attention.wq": ColwiseParallel(),
            "attention.wk": ColwiseParallel(),
            "attention.wv": ColwiseParallel(),
            "attention.wo": RowwiseParallel(output_layouts=seq, use_local_output=False) if sp else RowwiseParallel(),
            "feed_forward.w1": ColwiseParallel(),
            "feed_forward.w3": ColwiseParallel(),
            "feed_forward.w2": RowwiseParallel(output_layouts=seq, use_local_output=False) if sp else RowwiseParallel(),
        }
        if sp:
            plan["attention_norm"] = SequenceParallel()
            plan["ffn_norm"] = SequenceParallel()
            plan["attention"] = PrepareModuleInput(
                input_layouts=(seq, None, None, None, None), desired_input_layouts=(Replicate(), None, None, None, None)
            )
            plan["feed_forward"] = PrepareModuleInput(input_layouts=(seq,), desired_input_layouts=(Replicate(),))
        else:
            plan["attention_norm"] = ReplicateParallel()
            plan["ffn_norm"] = ReplicateParallel()
        for name, _ in layer.named_parameters():
            if not any(name.startswith(p + ".") for p in plan):
                raise ConfigError(f"tensor parallel: no sharding rule for parameter {name} of a decoder layer")
        parallelize_module(layer, tp_mesh, plan, src_data_rank=src_data_rank)
        attention = layer.attention
        attention.n_heads //= tp  # the local head counts the module's view() and the KV cache use
        attention.n_kv_heads //= tp
    if base.norm_out is not None:
        parallelize_module(
            base.norm_out, tp_mesh, SequenceParallel() if sp else ReplicateParallel(), src_data_rank=src_data_rank
        )
    if getattr(model, "lm_head", None) is not None:
        if vocab_parallel:
            style = ColwiseParallel(
                input_layouts=seq if sp else Replicate(),
                output_layouts=Shard(-1) if loss_parallel else Replicate(),
                use_local_output=not loss_parallel,
            )
        else:
            style = ReplicateParallel()
        parallelize_module(model.lm_head, tp_mesh, style, src_data_rank=src_data_rank)
    if getattr(model.config, "tie_word_embeddings", False) and base.tok_embeddings is not None:
        if getattr(model, "lm_head", None) is not None:
            model.tie_weights()  # both were distributed alike (replicated, or split over the vocabulary)
    return model


class _ReplicateThenShardSeq(ReplicateParallel):
    """A whole embedding table whose output enters a sequence-parallel residual stream."""

    def _apply(self, module: nn.Module, device_mesh: DeviceMesh) -> nn.Module:
        def partition(name, mod, mesh):
            for key, param in list(mod.named_parameters(recurse=False)):
                replicated = distribute_tensor(param.data, mesh, [Replicate()], src_data_rank=self.src_data_rank)
                mod.register_parameter(key, nn.Parameter(replicated, requires_grad=param.requires_grad))

        def input_fn(mod, inputs, mesh):
            return tuple(DTensor.from_local(x, mesh, (Replicate(),), run_check=False) for x in inputs)

        def output_fn(mod, output, mesh):
            return output.redistribute(mesh, (Shard(1),))

        return distribute_module(module, device_mesh, partition, input_fn, output_fn)


def _layers(base: nn.Module):
    layers = base.layers
    return layers.values() if isinstance(layers, nn.ModuleDict) else layers

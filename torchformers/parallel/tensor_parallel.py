"""Tensor (model) parallelism with DTensor `parallelize_module`, applied as the model's `ModelSpec` says.

Megatron-style sharding as MindFormers' `model_parallel` (spec §10.1) and torchtitan's `apply_tp`. The
family's `ParallelSpec.tp_plan` names, per decoder layer, the linears split by output features
("colwise"), those split by input features ("rowwise") and the norms ("norm", kept whole); with
`vocab_emb_dp: False` the embedding (`embedding`) is split over the vocabulary (rows) and the head
(`head`) column-wise (over the vocabulary), its logits gathered before the loss; with
`use_seq_parallel` the norms (and `final_norm`) and the residual stream are split over the sequence
(`SequenceParallel`) and gathered again at the input of each module that holds split linears.

Every parameter that is not split becomes a replicated DTensor on the same mesh (`ReplicateParallel`),
so that gradient clipping, checkpoints and FSDP see one kind of tensor. The layers keep their code;
only the head counts the spec lists in `tp_divide` are set to the local ones (divided by the degree),
which is what the modules' `view` calls and the KV cache read.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping, Sequence

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

from torchformers.errors import ConfigError
from torchformers.parallel.parts import decoder_layers, parallel_spec_of, submodule_or_none

__all__ = [
    "ReplicateParallel",
    "VocabParallelEmbedding",
    "apply_tensor_parallel",
    "check_tp_divisibility",
    "layer_plan",
]


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

    def __init__(self, weight_name: str = "weight", output_layout=None, use_local_output: bool = True):
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


def check_tp_divisibility(
    config, tp: int, vocab_parallel: bool, source: str = "the config", keys: Sequence[str] = ()
) -> None:
    """The config values named by `keys` (the spec's `tp_divisible`: heads, KV heads, FFN width) must split
    evenly over `model_parallel` ranks, and `vocab_size` too when the vocabulary is split."""
    names = [*keys, "vocab_size"] if vocab_parallel else list(keys)
    for key in names:
        value = getattr(config, key, None)
        if value is not None and value % tp:
            raise ConfigError(
                f"{source}: parallel_config.model_parallel is {tp} but model_config.{key} is {value}, "
                f"which does not split evenly over {tp} ranks"
            )


def layer_plan(tp_plan: Mapping[str, str], sequence_parallel: bool, layer: nn.Module) -> dict[str, ParallelStyle]:
    """The DTensor plan of one decoder layer from the spec's `tp_plan` ("colwise" / "rowwise" / "norm").

    Under sequence parallelism the row-wise outputs stay sequence-sharded DTensors (the residual stream),
    the norms run on sequence shards, and each module holding split linears gathers its first input
    (the hidden states) over the sequence before them.
    """
    sp = sequence_parallel
    seq = Shard(1)
    plan: dict[str, ParallelStyle] = {}
    for path, kind in tp_plan.items():
        if kind == "colwise":
            plan[path] = ColwiseParallel()
        elif kind == "rowwise":
            plan[path] = RowwiseParallel(output_layouts=seq, use_local_output=False) if sp else RowwiseParallel()
        elif kind == "norm":
            plan[path] = SequenceParallel() if sp else ReplicateParallel()
        else:
            raise ConfigError(f"ParallelSpec.tp_plan[{path!r}] is {kind!r}; expected 'colwise', 'rowwise' or 'norm'")
    if sp:
        parents = {path.rpartition(".")[0] for path, kind in tp_plan.items() if kind in ("colwise", "rowwise")}
        for parent in sorted(parents - {""}):
            n = _positional_inputs(layer.get_submodule(parent))
            plan[parent] = PrepareModuleInput(
                input_layouts=(seq, *[None] * (n - 1)), desired_input_layouts=(Replicate(), *[None] * (n - 1))
            )
    return plan


def _positional_inputs(module: nn.Module) -> int:
    """How many positional arguments `module.forward` takes (the layer passes all of them)."""
    params = inspect.signature(module.forward).parameters.values()
    return sum(p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) for p in params)


def apply_tensor_parallel(
    model: nn.Module,
    tp_mesh: DeviceMesh,
    *,
    sequence_parallel: bool = False,
    vocab_parallel: bool = False,
    loss_parallel: bool = False,
    src_data_rank: int | None = 0,
) -> nn.Module:
    """Shard `model` over `tp_mesh` in place as its `ModelSpec` says (`parallel.embedding`, `layers`,
    `final_norm`, `head`, `tp_plan`, `tp_divide`, `tp_divisible`). Modules a pipeline stage does not hold
    (None) are skipped. `src_data_rank=None` takes each rank's own copy (identical copies, or meta tensors)
    without communication; 0 scatters rank 0's weights."""
    spec = parallel_spec_of(model, "parallel_config.model_parallel")
    tp = tp_mesh.size()
    check_tp_divisibility(model.config, tp, vocab_parallel, keys=spec.tp_divisible)
    sp = sequence_parallel
    seq = Shard(1)
    # between blocks the residual stream is a sequence-sharded DTensor under SP, a plain tensor otherwise
    embedding_path, embedding_weight = spec.embedding if spec.embedding else (None, None)
    embedding = submodule_or_none(model, embedding_path)
    if embedding is not None:
        if vocab_parallel:
            style = VocabParallelEmbedding(
                embedding_weight, output_layout=seq if sp else Replicate(), use_local_output=not sp
            )
        else:
            style = _ReplicateThenShardSeq() if sp else ReplicateParallel()
        parallelize_module(embedding, tp_mesh, style, src_data_rank=src_data_rank)
    for layer in decoder_layers(model, "parallel_config.model_parallel"):
        plan = layer_plan(spec.tp_plan, sp, layer)
        for name, _ in layer.named_parameters():
            if not any(name.startswith(p + ".") for p in plan):
                raise ConfigError(
                    f"parallel_config.model_parallel: the ModelSpec tp_plan of {type(model).__name__} has no "
                    f"sharding rule for parameter {name} of a decoder layer"
                )
        parallelize_module(layer, tp_mesh, plan, src_data_rank=src_data_rank)
        for path, attributes in spec.tp_divide.items():
            module = layer.get_submodule(path)
            for attribute in attributes:  # the local counts the module's view() and the KV cache use
                setattr(module, attribute, getattr(module, attribute) // tp)
    final_norm = submodule_or_none(model, spec.final_norm)
    if final_norm is not None:
        style = SequenceParallel() if sp else ReplicateParallel()
        parallelize_module(final_norm, tp_mesh, style, src_data_rank=src_data_rank)
    head = submodule_or_none(model, spec.head)
    if head is not None:
        if vocab_parallel:
            style = ColwiseParallel(
                input_layouts=seq if sp else Replicate(),
                output_layouts=Shard(-1) if loss_parallel else Replicate(),
                use_local_output=not loss_parallel,
            )
        else:
            style = ReplicateParallel()
        parallelize_module(head, tp_mesh, style, src_data_rank=src_data_rank)
    if getattr(model.config, "tie_word_embeddings", False) and embedding is not None and head is not None:
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

"""Quantized linear layers for inference, and `quantize_model(model, settings)` that swaps them in.

Three layers replace `nn.Linear` (from outside the model, as `prepare_for_cpu_inference` does):

- `Int8WeightOnlyLinear`: int8 weights, one symmetric scale per output channel (`w = q * s`); activations
  stay in the compute dtype (A16W8: MindFormers' `quant_method: rtn`, `weight_dtype: int8`). On CPU
  it runs `torch.ops.aten._weight_int8pack_mm` (with bf16 activations, see `_CPU_KERNEL_DTYPE`);
  elsewhere `F.linear` on the int8 weights cast to the input dtype, scales applied to the output.
- `Int4WeightOnlyLinear`: 4-bit weights in groups of `group_size` (32, 64, 128 or 256) along the input
  dimension, each group with a scale and a zero point (`w = (q - 8) * s + z`, q in 0..15), the layout
  of PyTorch's int4 kernels (`_convert_weight_to_int4pack_for_cpu` + `_weight_int4pack_mm_for_cpu`,
  the same `scales_and_zeros` tensor as torchao / gpt-fast). The CPU kernel needs the output width to
  be a multiple of 16 and the input width a multiple of the group size: weights are padded with zero
  rows / columns and the input with zero columns, so the result equals the unpadded product. Off CPU
  the weights are dequantized per call (a reference path, not a fast one).
- `Int8DynamicLinear`: W8A8 (MindFormers' `smooth_quant` and `ptq`): int8 weights per output channel
  as above, and activations quantized per token at run time (symmetric, `max|x| / 127`), multiplied in
  int32 by `torch._int_mm` on CPU and rescaled (exact, not fast: PyTorch's CPU `_int_mm` is slower
  than an fp32 matmul).

Rounding is round-to-nearest from the float weights (golden-stick's `RoundToNearest`). Every layer
keeps its integer tensors, scales and zero points as buffers, so `state_dict()` holds the quantized
model and `safetensors` stores it bit for bit (`QuantizationSettings.to_metadata` for the header).

References: PyTorch `aten/src/ATen/native/cpu/int4mm_kernel.cpp` and `int8mm_kernel.cpp`; gpt-fast
`quantize.py`; MindFormers v1.3.2 `mindformers/utils/quantization_config.py` (`RtnConfig`, `PtqConfig`,
`SmoothQuantConfig`) and `mindformers/modules/quantizers/`.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors import safe_open
from torch import nn

from torchformers.checkpoint.formats import save_checkpoint
from torchformers.errors import ConfigError
from torchformers.generation.kv_cache import Int8KVCache, StaticKVCache
from torchformers.generation.text_generator import generation_state

__all__ = [
    "GROUP_SIZES",
    "Int4WeightOnlyLinear",
    "Int8DynamicLinear",
    "Int8GroupedLinear",
    "Int8WeightOnlyLinear",
    "QuantizedEmbedding",
    "QuantizationSettings",
    "quantization_of_file",
    "quantization_settings",
    "quantize_model",
    "quantize_state_dict",
    "save_quantized",
]

logger = logging.getLogger(__name__)

GROUP_SIZES = (32, 64, 128, 256)  # what PyTorch's int4 kernels accept
_OURS = ("int8", "int4", "gguf")
_MINDFORMERS = ("rtn", "ptq", "smooth_quant")
_KEYS = {
    "quant_method", "group_size", "weight_dtype", "activation_dtype", "kvcache_dtype", "outliers_suppression",
    "modules_to_not_convert", "algorithm_args", "mode", "backend", "kernel_dtype",
}  # fmt: skip
_KERNEL_DTYPES = {"bfloat16": torch.bfloat16, "float32": torch.float32}


def _none(value):
    """MindFormers' YAMLs write `None` unquoted, which YAML reads as the string 'None'."""
    return None if value is None or (isinstance(value, str) and value.strip() in ("None", "none", "")) else value


@dataclass(frozen=True)
class QuantizationSettings:
    """What `quantize_model` does.

    Attributes:
        weight: "int8" (per output channel) or "int4" (in groups), "gguf" (a GGUF file's blocks kept as
            they are: `torchformers.generation.gguf_quantized`), or None (weights stay float).
        group_size: input columns per int4 group.
        activation: "int8" for dynamic per-token int8 activations (W8A8; needs int8 weights), or None.
        modules_to_not_convert: a linear layer whose full name contains one of these stays float
            (MindFormers' `opname_blacklist` match).
        quant_method: the method as written in the config, for messages and the file metadata.
        kvcache: "int8" for a KV cache stored as int8 with per-token scales (`Int8KVCache`), or None.
        kernel_dtype: the activation dtype inside the CPU int8 / int4 kernels: "bfloat16" (None, the
            default: their fast path) or "float32" (products exact to fp32 rounding, 4-10x slower).
    """

    weight: str | None = "int8"
    group_size: int = 32
    activation: str | None = None
    modules_to_not_convert: tuple[str, ...] = field(default_factory=tuple)
    quant_method: str = "int8"
    kvcache: str | None = None
    kernel_dtype: str | None = None

    def to_metadata(self) -> dict[str, str]:
        """String key/values for a safetensors header."""
        return {"quantization": json.dumps(asdict(self))}

    @classmethod
    def from_metadata(cls, metadata: Mapping[str, str] | None) -> QuantizationSettings | None:
        if not metadata or "quantization" not in metadata:
            return None
        fields = json.loads(metadata["quantization"])
        fields["modules_to_not_convert"] = tuple(fields.get("modules_to_not_convert") or ())
        return cls(**fields)

    def describe(self) -> str:
        if self.weight == "gguf":
            text = "a GGUF file's quantized blocks (int4 / int8 groups of 32)"
        elif self.weight == "int4":
            text = f"int4 weights in groups of {self.group_size}"
        elif self.weight == "int8":
            text = "int8 weights and int8 per-token activations" if self.activation else "int8 weights"
        else:
            text = "float weights"
        text += f", {self.kernel_dtype} kernel activations" if self.kernel_dtype else ""
        return text + (", int8 KV cache" if self.kvcache else "")

    def torch_kernel_dtype(self) -> torch.dtype | None:
        return _KERNEL_DTYPES[self.kernel_dtype] if self.kernel_dtype else None


def _dtype_name(value, key: str, source: str) -> str | None:
    value = _none(value)
    if value is None:
        return None
    name = str(value).rsplit(".", 1)[-1].strip().lower()  # 'int8', or 'mstype.int8'
    if name != "int8":
        raise ConfigError(f"{source}: quantization_config.{key} is {value!r}; expected int8 or None")
    return name


def quantization_settings(config, source: str = "model.model_config") -> QuantizationSettings | None:
    """`QuantizationSettings` from a `quantization_config` (a mapping, or "int8"/"int4" as
    `--quantization` gives it), or None when there is none.

    Ours: `{quant_method: int8 | int4, group_size: 32, modules_to_not_convert: [...]}`. MindFormers':
    `quant_method: rtn | ptq | smooth_quant` with `weight_dtype`, `activation_dtype`, `kvcache_dtype`,
    `outliers_suppression`, `modules_to_not_convert`, `algorithm_args` (the checks of MindFormers'
    `RtnConfig`, `PtqConfig` and `SmoothQuantConfig`). A bad value raises `ConfigError`; settings
    PyTorch cannot give (an int8 KV cache, smoothing factors that need calibration) are logged once.
    """
    config = _none(config)
    if not config:
        return None
    if isinstance(config, str):
        config = {"quant_method": config}
    if not isinstance(config, Mapping):
        raise ConfigError(f"{source}: quantization_config is {config!r}; expected a mapping with quant_method")
    unknown = sorted(set(config) - _KEYS)
    if unknown:
        raise ConfigError(
            f"{source}: quantization_config has unknown key(s) {unknown}; expected some of {sorted(_KEYS)}"
        )
    method = str(_none(config.get("quant_method")) or "").strip().lower()
    if method not in _OURS + _MINDFORMERS:
        raise ConfigError(
            f"{source}: quantization_config.quant_method is {config.get('quant_method')!r}; "
            f"expected one of {', '.join(_OURS + _MINDFORMERS)}"
        )
    skip = _none(config.get("modules_to_not_convert")) or []
    if isinstance(skip, str) or not all(isinstance(s, str) for s in skip):
        raise ConfigError(
            f"{source}: quantization_config.modules_to_not_convert is {skip!r}; expected a list of layer names"
        )
    skip = tuple(skip)
    kernel = _none(config.get("kernel_dtype"))
    if kernel is not None and str(kernel) not in _KERNEL_DTYPES:
        raise ConfigError(
            f"{source}: quantization_config.kernel_dtype is {kernel!r}; expected {' or '.join(_KERNEL_DTYPES)}"
        )
    if method in _OURS:
        group = config.get("group_size", 32)
        if method in ("int8", "gguf") and "group_size" in config:
            raise ConfigError(
                f"{source}: quantization_config.group_size is for int4; "
                + ("int8 has one scale per output channel" if method == "int8" else "GGUF blocks set their groups")
            )
        if method == "int4" and group not in GROUP_SIZES:
            raise ConfigError(
                f"{source}: quantization_config.group_size is {group!r}; "
                f"expected one of {', '.join(map(str, GROUP_SIZES))}"
            )
        mf_keys = sorted(
            set(config) & (_KEYS - {"quant_method", "group_size", "modules_to_not_convert", "kernel_dtype"})
        )
        if mf_keys:
            raise ConfigError(
                f"{source}: quantization_config keys {mf_keys} belong to MindFormers' rtn/ptq/smooth_quant; "
                f"quant_method {method} takes group_size and modules_to_not_convert"
            )
        return QuantizationSettings(method, int(group), None, skip, method, kernel_dtype=kernel)
    weight = _dtype_name(config.get("weight_dtype", "int8"), "weight_dtype", source)
    activation = _dtype_name(config.get("activation_dtype"), "activation_dtype", source)
    kvcache = _dtype_name(config.get("kvcache_dtype"), "kvcache_dtype", source)
    outliers = _none(config.get("outliers_suppression"))
    if outliers is not None and outliers != "smooth":
        raise ConfigError(
            f"{source}: quantization_config.outliers_suppression is {outliers!r}; expected smooth or None"
        )
    if method == "rtn" and (activation is not None or outliers is not None):
        raise ConfigError(
            f"{source}: quant_method rtn quantizes weights (and the KV cache) only: activation_dtype is "
            f"{activation!r} and outliers_suppression {outliers!r}; expected None for both (MindFormers' RtnConfig)"
        )
    if weight is None and activation is not None:
        raise ConfigError(f"{source}: quantization_config quantizes activations without weights (weight_dtype None)")
    for key in ("mode", "backend"):
        if key in config:
            logger.info("quantization_config.%s = %r has no effect on PyTorch", key, config[key])
    if outliers == "smooth" or method == "smooth_quant":
        logger.warning(
            "quantization_config %s: smoothing factors come from calibration, which a float checkpoint does not "
            "hold; identity smoothing is used (plain per-channel int8 weights, per-token int8 activations)",
            method,
        )
    return QuantizationSettings(weight, 32, activation, skip, method, kvcache, kernel)


def quantization_of_file(path) -> QuantizationSettings | None:
    """The settings stored in a quantized `.safetensors` file's metadata, or None (any other file)."""
    path = Path(path)
    if path.suffix != ".safetensors" or not path.is_file():
        return None
    with safe_open(str(path), framework="pt") as f:
        return QuantizationSettings.from_metadata(f.metadata())


# ------------------------------------------------------------------------------------------ layers
# PyTorch's CPU int8/int4 kernels are vectorised for bf16 activations; with fp32 (or fp16) activations
# they run 4-10x slower than an fp32 `F.linear` (torch 2.13, x86). Inputs are cast to bf16 for them
# and the result cast back, which rounds activations as a bf16 model does.
_CPU_KERNEL_DTYPE = torch.bfloat16


def _quantize_int8(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric per-output-channel int8: `(q (N, K) int8, scales (N,) fp32)` with `weight ≈ q * scales`."""
    w = weight.detach().float()
    scales = (w.abs().amax(dim=1) / 127).clamp(min=1e-8)
    q = torch.round(w / scales[:, None]).clamp(-128, 127).to(torch.int8)
    return q, scales


_ROW_LAYOUTS: dict[int, tuple[int, torch.Tensor]] = {}


def _kernel_row_layout(k: int) -> tuple[int, torch.Tensor]:
    """Where `_convert_weight_to_int4pack_for_cpu` puts the weights of a row: `(B, where)`, the kernel
    layout being blocks of B rows (B = 32 on AVX2, 64 on AVX-512), `where[r, k]` the nibble offset of
    weight (r, k) within its block (byte = offset // 2, high nibble when odd). Found by packing probes
    whose values spell each weight's index in base 16, and checked on random weights; per K, cached."""
    if k not in _ROW_LAYOUTS:
        rows = 128
        index = torch.arange(rows * k).reshape(rows, k)
        source = torch.zeros(rows * k, dtype=torch.int64)
        for digit in range(-(-int(rows * k - 1).bit_length() // 4)):
            probe = ((index >> (4 * digit)) & 0xF).to(torch.int32)
            packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(probe.contiguous(), 8)
            nibbles = torch.stack([packed & 0xF, packed >> 4], -1).reshape(-1).to(torch.int64)
            source += nibbles << (4 * digit)
        where = torch.empty_like(source)
        where[source] = torch.arange(rows * k)
        where = where.reshape(rows, k)
        block = next(b for b in (16, 32, 64, 128) if b == rows or torch.equal(where[b:], where[:-b] + b * k))
        q = torch.randint(0, 16, (3 * block, k), dtype=torch.int32, generator=torch.Generator().manual_seed(k))
        flat = torch.ops.aten._convert_weight_to_int4pack_for_cpu(q, 8).reshape(-1)
        ids = torch.arange(3 * block)
        nibble = (ids // block)[:, None] * (block * k) + where[ids % block]
        got = torch.where(nibble % 2 == 1, flat[nibble // 2] >> 4, flat[nibble // 2] & 0xF)
        if not torch.equal(got.to(torch.int32), q):
            raise RuntimeError("the int4 kernel's weight layout is not made of blocks of rows; cannot read rows back")
        _ROW_LAYOUTS[k] = (block, where[:block].clone())
    return _ROW_LAYOUTS[k]


def _bias(bias: torch.Tensor | None) -> nn.Parameter | None:
    return None if bias is None else nn.Parameter(bias.detach().clone(), requires_grad=False)


class _QuantLinear(nn.Module):
    """Shared parts: shapes, bias, no training."""

    def __init__(self, in_features: int, out_features: int, bias: torch.Tensor | None) -> None:
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.bias = _bias(bias)

    def _finish(self, y: torch.Tensor) -> torch.Tensor:
        return y if self.bias is None else y + self.bias.to(y.dtype)

    def train(self, mode: bool = True):
        if mode:
            raise RuntimeError(f"{type(self).__name__} is for inference: quantized weights do not train")
        return super().train(False)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"


class Int8WeightOnlyLinear(_QuantLinear):
    """`y = x (q * s)^T + b` with int8 `q` (N, K) and per-channel fp32 scales `s` (N,)."""

    kernel_dtype: torch.dtype | None = None  # the CPU kernel's activation dtype; None: _CPU_KERNEL_DTYPE

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None = None) -> None:
        super().__init__(weight.shape[1], weight.shape[0], bias)
        q, scales = _quantize_int8(weight)
        self.register_buffer("weight_int8", q)
        self.register_buffer("weight_scale", scales)

    def dequantize(self) -> torch.Tensor:
        return self.weight_int8.float() * self.weight_scale[:, None]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape[:-1]
        x2 = x.reshape(-1, self.in_features)
        # the CPU kernel crashes for bf16 inputs whose width is not a multiple of 8 (PyTorch 2.13)
        if x.device.type == "cpu" and self.in_features % 8 == 0:
            dtype = self.kernel_dtype or _CPU_KERNEL_DTYPE
            xb = x2.to(dtype).contiguous()
            y = torch.ops.aten._weight_int8pack_mm(xb, self.weight_int8, self.weight_scale.to(dtype))
            y = y.to(x.dtype)
        else:
            y = F.linear(x2, self.weight_int8.to(x.dtype)) * self.weight_scale.to(x.dtype)
        return self._finish(y.reshape(*shape, self.out_features))


class Int8DynamicLinear(Int8WeightOnlyLinear):
    """W8A8: int8 weights per output channel, activations quantized per token at run time."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape[:-1]
        x2 = x.reshape(-1, self.in_features).float()
        x_scale = (x2.abs().amax(dim=1, keepdim=True) / 127).clamp(min=1e-8)  # (M, 1)
        xq = torch.round(x2 / x_scale).clamp(-128, 127).to(torch.int8)
        if x.device.type == "cpu":
            acc = torch._int_mm(xq, self.weight_int8.t()).float()  # exact int32 sums
        else:  # a reference path: float sums of int8 products
            acc = xq.float() @ self.weight_int8.float().t()
        y = (acc * x_scale * self.weight_scale).to(x.dtype)
        return self._finish(y.reshape(*shape, self.out_features))


def _quantize_int4(weight: torch.Tensor, group_size: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Asymmetric 4-bit groups along K: `(q (N, K) int32 in 0..15, scales (N, G), zeros (N, G))`,
    `weight ≈ (q - 8) * scale + zero` per group (torchao's `get_groupwise_affine_qparams` convention)."""
    n, k = weight.shape
    w = weight.detach().float().reshape(n, k // group_size, group_size)
    lo, hi = w.amin(dim=2), w.amax(dim=2)
    scales = ((hi - lo) / 15).clamp(min=1e-6)
    zeros = lo + scales * 8
    q = torch.round((w - lo[..., None]) / scales[..., None]).clamp(0, 15).to(torch.int32)
    return q.reshape(n, k), scales, zeros


class Int4WeightOnlyLinear(_QuantLinear):
    """`y = x W^T + b` with `W = (q - 8) * scale + zero` in groups of `group_size` input columns.

    State (what `state_dict()` holds and a file stores): `weight_int4` (N, K_pad / 2) uint8, two 4-bit
    values per byte (even column in the low nibble), `weight_scale` and `weight_zero`
    (N, K_pad / group_size) fp32. `K_pad` is K rounded up to the group size (padded columns are zeros).

    On CPU the layer computes with PyTorch's kernel layout instead, built on first use: the packed
    weight and a `scales_and_zeros` tensor in the kernel's activation dtype (`kernel_dtype`, bf16 by
    default). Once built, the portable tensors are released (kept as meta tensors, for their names and
    shapes), so the layer holds one copy of its weights: 4 bits a weight plus a scale and zero point
    per group. `state_dict()` rebuilds the portable tensors from the kernel layout (the scales and zero
    points the layer computes with: rounded to bf16 when it ran with bf16 activations); tensors loaded
    into the layer (`load_state_dict`, the checkpoint loader) replace them and the kernel layout is
    rebuilt on next use. Moving the layer (`.to(...)`) restores the portable tensors first.
    """

    _PORTABLE = ("weight_int4", "weight_scale", "weight_zero")
    kernel_dtype: torch.dtype | None = None  # the CPU kernel's activation dtype; None: _CPU_KERNEL_DTYPE

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None = None, group_size: int = 32) -> None:
        if group_size not in GROUP_SIZES:
            raise ValueError(f"int4 group_size is {group_size}; expected one of {GROUP_SIZES}")
        super().__init__(weight.shape[1], weight.shape[0], bias)
        self.group_size = group_size
        k_pad = -(-self.in_features // group_size) * group_size
        w = F.pad(weight.detach().float(), (0, k_pad - self.in_features))
        self._init_state(*_quantize_int4(w, group_size))

    @classmethod
    def from_groups(
        cls, q: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, bias: torch.Tensor | None = None,
        group_size: int = 32,
    ) -> Int4WeightOnlyLinear:  # fmt: skip
        """A layer from weights already in groups (no float weight is made): `q` (N, K) integers in
        0..15, `scale` and `zero` (N, K / group_size), `W = (q - 8) * scale + zero`; K a multiple of
        `group_size` (GGUF's 4-bit blocks: `torchformers.checkpoint.gguf_blocks.int4_groups`)."""
        if group_size not in GROUP_SIZES:
            raise ValueError(f"int4 group_size is {group_size}; expected one of {GROUP_SIZES}")
        n, k = q.shape
        if k % group_size or scale.shape != (n, k // group_size) or zero.shape != scale.shape:
            raise ValueError(
                f"int4 groups: q {tuple(q.shape)}, scale {tuple(scale.shape)}, zero {tuple(zero.shape)} for "
                f"groups of {group_size}; expected K a multiple of {group_size} and scales (N, K / {group_size})"
            )
        layer = cls.__new__(cls)
        _QuantLinear.__init__(layer, k, n, bias)
        layer.group_size = group_size
        layer._init_state(q.to(torch.int32), scale.float(), zero.float())
        return layer

    def _init_state(self, q: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor) -> None:
        self.register_buffer("weight_int4", (q[:, 0::2] | (q[:, 1::2] << 4)).to(torch.uint8))
        self.register_buffer("weight_scale", scales)
        self.register_buffer("weight_zero", zeros)
        self.register_buffer("_int4_packed", None, persistent=False)  # the CPU kernel layout, once built
        self.register_buffer("_int4_sz", None, persistent=False)

    # -------------------------------------------------------------- portable form <-> kernel layout
    def _released(self) -> bool:
        return any(getattr(self, name).is_meta for name in self._PORTABLE)

    def _n_pad(self) -> int:
        """Rows added for the kernel: N rounded up to its blocks of rows (a multiple of 16), so that every
        block is whole and `rows` can read any row back."""
        block = max(16, _kernel_row_layout(self.weight_int4.shape[1] * 2)[0])
        return -(-self.out_features // block) * block - self.out_features

    def _q_from_kernel(self, ids: torch.Tensor | None = None) -> torch.Tensor:
        """(M, K_pad) int32: rows `ids` (default: all N) read back from the kernel layout."""
        k_pad = self.weight_int4.shape[1] * 2
        block, where = _kernel_row_layout(k_pad)
        flat = self._int4_packed.reshape(-1)
        ids = torch.arange(self.out_features) if ids is None else ids
        out = []
        for part in ids.split(4096):  # bounded index tensors
            nibble = (part // block)[:, None] * (block * k_pad) + where[part % block]  # (M, K_pad)
            byte = flat[nibble // 2]
            out.append(torch.where(nibble % 2 == 1, byte >> 4, byte & 0xF).to(torch.int32))
        return torch.cat(out) if out else torch.empty(0, k_pad, dtype=torch.int32)

    def _state(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """`(q (N, K_pad) int32 in 0..15, scale, zero (N, K_pad / g) fp32)`, from the portable tensors
        where the layer holds them, else from the kernel layout."""
        if self.weight_int4.is_meta:
            q = self._q_from_kernel()
        else:
            b = self.weight_int4.to(torch.int32)
            q = torch.stack([b & 0xF, b >> 4], dim=-1).reshape(b.shape[0], -1)
        n = self.out_features
        scale = self._int4_sz[..., 0].t()[:n].float() if self.weight_scale.is_meta else self.weight_scale
        zero = self._int4_sz[..., 1].t()[:n].float() if self.weight_zero.is_meta else self.weight_zero
        return q, scale, zero

    def _restore_portable(self) -> None:
        """Hold the portable tensors again (and drop the kernel layout)."""
        if self._released():
            q, scale, zero = self._state()
            self.weight_int4 = (q[:, 0::2] | (q[:, 1::2] << 4)).to(torch.uint8)
            self.weight_scale, self.weight_zero = scale.contiguous(), zero.contiguous()
        self._int4_packed = self._int4_sz = None

    def _cpu_kernel_inputs(self, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """`(packed weight, scales_and_zeros)` for `_weight_int4pack_mm_for_cpu`: N padded to 16. Built
        from the portable tensors (which are then released) when the layer has none yet, when tensors
        were loaded into it since, or for another activation dtype."""
        if self._int4_packed is None or not self._released() or self._int4_sz.dtype != dtype:
            q, scale, zero = self._state()
            n_pad = self._n_pad()
            packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(
                F.pad(q, (0, 0, 0, n_pad), value=8).contiguous(), 8
            )
            sz = torch.stack([F.pad(scale, (0, 0, 0, n_pad)), F.pad(zero, (0, 0, 0, n_pad))], -1)
            self._int4_packed, self._int4_sz = packed, sz.transpose(0, 1).contiguous().to(dtype)  # (K_pad/g, N_pad, 2)
            for name in self._PORTABLE:  # one copy of the weights: the kernel's
                setattr(self, name, torch.empty_like(getattr(self, name), device="meta"))
        return self._int4_packed, self._int4_sz

    def rows(self, ids: torch.Tensor) -> torch.Tensor:
        """Rows `ids` (M,) of the float weight, (M, K) fp32, read without unpacking the whole layer (an
        embedding lookup)."""
        if not self._released():
            q, scale, zero = self._state()
            q, scale, zero = q[ids], scale[ids], zero[ids]
        else:
            q = self._q_from_kernel(ids)
            scale, zero = (self._int4_sz[:, ids, i].t().float() for i in (0, 1))
        g = self.group_size
        w = (q.float() - 8) * scale.repeat_interleave(g, 1) + zero.repeat_interleave(g, 1)
        return w[:, : self.in_features]

    def _unpacked(self) -> torch.Tensor:
        """(N, K_pad) int32 in 0..15."""
        return self._state()[0]

    def dequantize(self) -> torch.Tensor:
        """The float weight (N, K) the layer computes with."""
        q, scale, zero = self._state()
        g = self.group_size
        w = (q.float() - 8) * scale.repeat_interleave(g, 1) + zero.repeat_interleave(g, 1)
        return w[:, : self.in_features]

    # -------------------------------------------------------------- state dict, device moves
    def _save_to_state_dict(self, destination, prefix, keep_vars):
        super()._save_to_state_dict(destination, prefix, keep_vars)
        if self._released() and not keep_vars:  # (keep_vars: the loader's view; meta tensors are filled)
            q, scale, zero = self._state()
            destination[prefix + "weight_int4"] = (q[:, 0::2] | (q[:, 1::2] << 4)).to(torch.uint8)
            destination[prefix + "weight_scale"] = scale.contiguous()
            destination[prefix + "weight_zero"] = zero.contiguous()

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        if self._released() and all(prefix + name in state_dict for name in self._PORTABLE):
            for name in self._PORTABLE:  # fresh tensors to copy into; the kernel layout follows on next use
                setattr(self, name, torch.empty_like(getattr(self, name), device=self._int4_packed.device))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def _apply(self, fn, recurse=True):
        self._restore_portable()  # the kernel layout belongs to the CPU it was built on
        return super()._apply(fn, recurse)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape[:-1]
        x2 = x.reshape(-1, self.in_features)
        if x.device.type == "cpu":
            dtype = self.kernel_dtype or _CPU_KERNEL_DTYPE
            packed, sz = self._cpu_kernel_inputs(dtype)
            k_pad = self.weight_int4.shape[1] * 2
            xb = x2.to(dtype)
            if k_pad != self.in_features:
                xb = F.pad(xb, (0, k_pad - self.in_features))
            xb = xb.contiguous()
            y = torch.ops.aten._weight_int4pack_mm_for_cpu(xb, packed, self.group_size, sz)[:, : self.out_features]
            y = y.to(x.dtype)
        else:
            y = F.linear(x2, self.dequantize().to(x.dtype))
        return self._finish(y.reshape(*shape, self.out_features))

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, group_size={self.group_size}"


class Int8GroupedLinear(_QuantLinear):
    """`y = x W^T + b` with `W = q * scale`, int8 `q` and one scale per group of `group_size` input columns
    (GGUF's Q8_0: groups of 32, symmetric), computed exactly on the int4 kernel as two 4-bit halves.

    PyTorch's int8 CPU kernel takes one scale per output channel only (and is slower than its int4
    kernel), so each 8-bit value is split: `q + 128 = 16·h + l` with `h, l` in 0..15, and
    `W = 16·scale·(h − 8) + scale·l`. The layer holds one `Int4WeightOnlyLinear` (`int4`) over
    `[x, x]` (2K inputs): the `h` half with scales `16·scale` and zero points 0, the `l` half with
    scales `scale` and zero points `8·scale`; both are exact. One byte a weight, as int8. Its rows
    also serve as the token embeddings (`rows`).
    """

    def __init__(self, q: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None = None, group_size: int = 32):
        n, k = q.shape
        if k % group_size or scale.shape != (n, k // group_size):
            raise ValueError(
                f"int8 groups: q {tuple(q.shape)} and scale {tuple(scale.shape)} for groups of {group_size}; "
                f"expected K a multiple of {group_size} and scales (N, K / {group_size})"
            )
        super().__init__(k, n, bias)
        self.group_size = group_size
        u = q.to(torch.int32) + 128
        scale = scale.float()
        self.int4 = Int4WeightOnlyLinear.from_groups(
            torch.cat([u >> 4, u & 0xF], 1),
            torch.cat([16 * scale, scale], 1),
            torch.cat([torch.zeros_like(scale), 8 * scale], 1),
            group_size=group_size,
        )

    @property
    def kernel_dtype(self) -> torch.dtype | None:
        return self.int4.kernel_dtype

    @kernel_dtype.setter
    def kernel_dtype(self, dtype: torch.dtype | None) -> None:
        self.int4.kernel_dtype = dtype

    def dequantize(self) -> torch.Tensor:
        w = self.int4.dequantize()
        return w[:, : self.in_features] + w[:, self.in_features :]

    def rows(self, ids: torch.Tensor) -> torch.Tensor:
        """Rows `ids` (M,) of the float weight, (M, K) fp32: an embedding lookup."""
        w = self.int4.rows(ids)
        return w[:, : self.in_features] + w[:, self.in_features :]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._finish(self.int4(torch.cat([x, x], -1)))

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, group_size={self.group_size}"


class QuantizedEmbedding(nn.Module):
    """Token embeddings read from a quantized layer's rows (`Int8GroupedLinear.rows`): the tied
    `lm_head`'s (`tied=True`: not a submodule here, the head owns it) or its own table."""

    def __init__(self, table: Int8GroupedLinear, tied: bool, dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        if tied:
            object.__setattr__(self, "_tied_table", table)
        else:
            self.table = table
        self.dtype = dtype

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        table = self.__dict__.get("_tied_table") or self.table
        return table.rows(input_ids.reshape(-1)).to(self.dtype).reshape(*input_ids.shape, table.in_features)


# ------------------------------------------------------------------------------------------ the swap
def _quantized(weight: torch.Tensor, bias: torch.Tensor | None, settings: QuantizationSettings) -> nn.Module:
    if settings.weight == "int4":
        return Int4WeightOnlyLinear(weight, bias, settings.group_size)
    if settings.activation == "int8":
        return Int8DynamicLinear(weight, bias)
    return Int8WeightOnlyLinear(weight, bias)


def _converted(name: str, module: nn.Module, settings: QuantizationSettings) -> bool:
    return type(module) is nn.Linear and not any(s in name for s in settings.modules_to_not_convert)


_INT8_CACHE_CLASSES: dict[type, type] = {}


def _int8_cache_class(cls: type) -> type:
    """`cls` whose `setup_kv_cache` allocates `Int8KVCache`s in place of its `StaticKVCache`s."""
    if cls not in _INT8_CACHE_CLASSES:

        def setup_kv_cache(self, batch_size: int, max_length: int, dtype: torch.dtype | None = None) -> None:
            cls.setup_kv_cache(self, batch_size, max_length, dtype)
            state = generation_state(self)
            state.kv_caches = [
                Int8KVCache(*c.key_cache.shape, c.key_cache.dtype, c.key_cache.device)
                if type(c) is StaticKVCache
                else c
                for c in state.kv_caches
            ]

        body = {"setup_kv_cache": setup_kv_cache, "__module__": cls.__module__}
        _INT8_CACHE_CLASSES[cls] = type(f"Int8Cache{cls.__name__}", (cls,), body)
    return _INT8_CACHE_CLASSES[cls]


@torch.no_grad()
def quantize_model(model: nn.Module, settings: QuantizationSettings) -> nn.Module:
    """Replace every `nn.Linear` of `model` whose name contains none of `settings.modules_to_not_convert`
    by its quantized layer, round-to-nearest from its current weights; returns `model` in eval mode with
    `model.quantization = settings`.

    With `settings.kvcache == "int8"` the model's class becomes a subclass whose `setup_kv_cache`
    allocates `Int8KVCache`s (as prepacking swaps classes). Apply it before `prepare_for_cpu_inference`
    (which packs the linear layers left float). Load a quantized state dict after applying it to a model
    of the same config."""
    if settings.weight == "gguf":
        raise ConfigError(
            "quant_method gguf keeps a GGUF file's quantized blocks: load the .gguf file with it "
            "(load_checkpoint, or torchformers.generation.gguf_quantized.load_gguf_quantized)"
        )
    model.eval()
    count = 0
    if settings.weight is not None:
        for name, module in list(model.named_modules()):
            for child_name, child in list(module.named_children()):
                full = f"{name}.{child_name}" if name else child_name
                if _converted(full, child, settings):
                    layer = _quantized(child.weight, child.bias, settings)
                    layer.kernel_dtype = settings.torch_kernel_dtype()
                    setattr(module, child_name, layer)
                    count += 1
    swapped = type(model) in _INT8_CACHE_CLASSES.values()
    if settings.kvcache == "int8" and hasattr(model, "setup_kv_cache") and not swapped:
        model.__class__ = _int8_cache_class(type(model))
    model.quantization = settings
    logger.info("quantized %d linear layers: %s (quant_method %s)", count, settings.describe(), settings.quant_method)
    return model


@torch.no_grad()
def quantize_state_dict(
    state: Mapping[str, torch.Tensor], model: nn.Module, settings: QuantizationSettings
) -> dict[str, torch.Tensor]:
    """The state dict `quantize_model` would give `model` loaded with `state`, computed from the tensors
    alone (`model` only names the linear layers, so it may live on the meta device)."""
    out = dict(state)
    if settings.weight is None:
        return out
    for name, module in model.named_modules():
        if _converted(name, module, settings) and f"{name}.weight" in state:
            bias = out.pop(f"{name}.bias", None)
            layer = _quantized(out.pop(f"{name}.weight"), bias, settings)
            out.update({f"{name}.{k}": v for k, v in layer.state_dict().items()})
    return out


def save_quantized(state: Mapping[str, torch.Tensor], path, settings: QuantizationSettings) -> None:
    """Write a quantized state dict to a `.safetensors` file (atomically), the settings in its metadata,
    so that `quantization_of_file` and the trainer's loader rebuild the same layers."""
    if Path(path).suffix != ".safetensors":
        raise ConfigError(f"{path}: quantized checkpoints are written as .safetensors (the settings go in its header)")
    path = Path(path)
    tmp = path.with_name(f".{path.stem}.partial.safetensors")  # renamed over `path` only once complete
    try:
        save_checkpoint(
            {k: v.contiguous() for k, v in state.items()}, tmp, metadata={"format": "pt", **settings.to_metadata()}
        )
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)

"""Perplexity of each inference variant of a real checkpoint, so that speed never hides a quality loss.

The text is the first `--tokens` tokens (default 2,048) of the project's Wikipedia asset
(`text/wiki.utf8`), read as one sequence; perplexity = exp(mean cross-entropy of tokens 2..N).
Variants (`--variants`, default all):

- `fp32`: the float checkpoint as predict runs it (prepacked for oneDNN);
- `bf16`: the same weights in bf16 (compute and parameters);
- `int8`: int8 per output channel, round-to-nearest from the fp32 weights;
- `int4-g32`, `int4-g64`, `int4-g128`: int4 groups of 32 / 64 / 128, round-to-nearest from fp32;
- `gguf`: the GGUF file the checkpoint came from, kept quantized (`quant_method: gguf`).

The quantized variants run their CPU kernels with bf16 activations (their default fast path). The
table gives each variant's perplexity, its change against fp32, and the weight memory it holds
(parameters, buffers and packed copies, once each).

    python scripts/prepare_smollm2.py
    PYTHONPATH=. python bench/quality.py --model_dir checkpoint_download/smollm2 \\
        --gguf smollm2/SmolLM2-135M-Instruct.Q4_1.gguf
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from torchformers.checkpoint.loader import load_weights
from torchformers.generation import prepare_for_cpu_inference
from torchformers.generation.gguf_quantized import load_gguf_quantized
from torchformers.generation.quantization import QuantizationSettings, quantize_model
from torchformers.models import LlamaConfig, LlamaForCausalLM
from torchformers.tools.assets import fetch

VARIANTS = ("fp32", "bf16", "int8", "int4-g32", "int4-g64", "int4-g128", "gguf")


def gguf_path(name: str) -> Path:
    """A file path, or an asset name (`smollm2/SmolLM2-135M-Instruct.Q4_1.gguf`) fetched into the cache."""
    return Path(name) if Path(name).is_file() else fetch(name)


def load_variant(name: str, model_dir: Path, gguf: str | None = None) -> LlamaForCausalLM:
    """The model of variant `name` (see the module docstring), ready for inference on CPU."""
    if name == "gguf":
        if gguf is None:
            raise SystemExit("the gguf variant needs --gguf FILE_OR_ASSET")
        with torch.device("meta"):
            model = LlamaForCausalLM(LlamaConfig.from_pretrained(model_dir))
        return load_gguf_quantized(model, gguf_path(gguf))
    weights = next(model_dir.glob("*.safetensors"))
    if name == "bf16":
        config = LlamaConfig.from_pretrained(model_dir, compute_dtype="bfloat16", param_init_type="bfloat16")
        model = LlamaForCausalLM(config).eval()
        load_weights(model, weights)
        return model
    model = LlamaForCausalLM(LlamaConfig.from_pretrained(model_dir)).eval()
    load_weights(model, weights)
    if name == "int8":
        quantize_model(model, QuantizationSettings("int8"))
    elif name.startswith("int4-g"):
        quantize_model(model, QuantizationSettings("int4", int(name[6:]), quant_method="int4"))
    elif name != "fp32":
        raise SystemExit(f"unknown variant {name!r}; expected some of {', '.join(VARIANTS)}")
    return prepare_for_cpu_inference(model)


def held_mib(model: torch.nn.Module) -> float:
    """Weight memory: parameters, buffers (not the meta placeholders of released tensors) and packed
    copies (oneDNN's packed weights, cached scales), each storage once."""
    seen, total = set(), 0
    tensors = list(model.parameters()) + list(model.buffers())
    for module in model.modules():
        if getattr(module, "packed_weight", None) is not None:
            tensors.append(module.packed_weight)
        cached = getattr(module, "_scale_cache", None)
        if cached:
            tensors.append(cached[1])
    for t in tensors:
        if t.is_meta:
            continue
        key = t.data_ptr() if t.layout == torch.strided else id(t)  # oneDNN's packed weights are opaque
        if key not in seen:
            seen.add(key)
            total += t.numel() * t.element_size()
    return total / 2**20


def wiki_ids(tokenizer_file: Path, n_tokens: int) -> torch.Tensor:
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(tokenizer_file))
    text = fetch("text/wiki.utf8").read_text()
    ids = tokenizer.encode(text[: 20 * n_tokens]).ids
    if len(ids) < n_tokens:
        raise SystemExit(f"the Wikipedia text gives {len(ids)} tokens, fewer than {n_tokens}")
    return torch.tensor([ids[:n_tokens]])


@torch.inference_mode()
def perplexity(model: torch.nn.Module, ids: torch.Tensor) -> float:
    logits = model(ids[:, :-1])[0].float()
    return F.cross_entropy(logits, ids[0, 1:]).exp().item()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model_dir", default="checkpoint_download/smollm2",
                   help="config.json, tokenizer.json and one fp32 .safetensors")  # fmt: skip
    p.add_argument("--gguf", default="smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
                   help="the GGUF file (or asset name) for the gguf variant")  # fmt: skip
    p.add_argument("--tokens", type=int, default=2048)
    p.add_argument("--variants", default=",".join(VARIANTS))
    p.add_argument("--threads", type=int, default=None)
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    model_dir = Path(args.model_dir)
    ids = wiki_ids(model_dir / "tokenizer.json", args.tokens)
    rows = []
    for name in args.variants.split(","):
        model = load_variant(name, model_dir, args.gguf)
        start = time.perf_counter()
        ppl = perplexity(model, ids)
        rows.append((name, ppl, held_mib(model), time.perf_counter() - start))
        del model
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, {args.tokens} Wikipedia tokens")
    base = dict((r[0], r) for r in rows).get("fp32")
    print(f"{'variant':10s} {'perplexity':>10s} {'vs fp32':>8s} {'weights MiB':>11s} {'vs fp32':>8s} {'time s':>7s}")
    for name, ppl, mib, seconds in rows:
        d_ppl = f"{100 * (ppl / base[1] - 1):+7.2f}%" if base else ""
        d_mem = f"{100 * mib / base[2]:7.1f}%" if base else ""
        print(f"{name:10s} {ppl:10.3f} {d_ppl:>8s} {mib:11.1f} {d_mem:>8s} {seconds:7.1f}")


if __name__ == "__main__":
    main()

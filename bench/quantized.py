"""Batch-1 decode speed and perplexity of quantized variants of a real checkpoint, side by side.

Variants: fp32 (prepacked, predict's default), int8, int4 in groups of 32 (also with `lm_head` kept
fp32) and 128, and W8A8 (MindFormers' `smooth_quant` with identity smoothing). Each is built from the
same checkpoint with `quantize_model` and then `prepare_for_cpu_inference`; decode tokens/s use
`bench/generate.py`'s `measure` (prefill + one token against prefill + N tokens), the variants
interleaved over `--rounds` rounds with the best round kept, so a noisy machine slows them alike.
Perplexity is over the first `--ppl-tokens` tokens of the project's Wikipedia text.

    python scripts/prepare_smollm2.py --output_dir /tmp/smol
    PYTHONPATH=. python bench/quantized.py --model_dir /tmp/smol --threads 1
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))

from generate import measure  # noqa: E402

from torchformers.checkpoint.loader import load_weights  # noqa: E402
from torchformers.generation import prepare_for_cpu_inference  # noqa: E402
from torchformers.generation.quantization import QuantizationSettings, quantize_model  # noqa: E402
from torchformers.models import LlamaConfig, LlamaForCausalLM  # noqa: E402
from torchformers.tools.assets import fetch  # noqa: E402

VARIANTS = {
    "fp32 (prepacked)": None,
    "int8": QuantizationSettings("int8"),
    "int4 g32": QuantizationSettings("int4", 32, quant_method="int4"),
    "int4 g32, lm_head fp32": QuantizationSettings("int4", 32, None, ("lm_head",), "int4"),
    "int4 g128": QuantizationSettings("int4", 128, quant_method="int4"),
    "w8a8 (smooth_quant)": QuantizationSettings("int8", activation="int8", quant_method="smooth_quant"),
}


def held_mib(model: torch.nn.Module) -> float:
    """Parameters, buffers and packed copies (oneDNN's and the int4 kernel's), each storage once."""
    seen, total = set(), 0
    tensors = list(model.parameters()) + list(model.buffers())
    for module in model.modules():
        if getattr(module, "packed_weight", None) is not None:
            tensors.append(module.packed_weight)
        cached = getattr(module, "_packed", None)
        if cached:
            tensors += [t for t in cached if isinstance(t, torch.Tensor)]
    for t in tensors:
        key = t.data_ptr() if t.layout == torch.strided else id(t)  # oneDNN's packed weights are opaque
        if key not in seen:
            seen.add(key)
            total += t.numel() * t.element_size()
    return total / 2**20


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model_dir", required=True, help="folder with config.json, tokenizer.json and one .safetensors")
    p.add_argument("--prompt-len", type=int, default=32)
    p.add_argument("--new-tokens", type=int, default=24)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--ppl-tokens", type=int, default=256)
    p.add_argument("--threads", type=int, default=None)
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    from tokenizers import Tokenizer

    folder = Path(args.model_dir)
    weights = next(folder.glob("*.safetensors"))
    tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
    text = fetch("text/wiki.utf8").read_text()[: 100 * args.ppl_tokens]
    eval_ids = torch.tensor([tokenizer.encode(text).ids[: args.ppl_tokens + 1]])

    models = {}
    for name, settings in VARIANTS.items():
        model = LlamaForCausalLM(LlamaConfig.from_pretrained(folder)).eval()
        load_weights(model, weights)
        if settings is not None:
            quantize_model(model, settings)
        models[name] = prepare_for_cpu_inference(model)
    vocab = models["int8"].config.vocab_size
    prompt = torch.randint(3, vocab, (1, args.prompt_len), generator=torch.Generator().manual_seed(1)).tolist()

    info, best = {}, {}
    with torch.inference_mode():
        for name, model in models.items():
            nll = F.cross_entropy(model(eval_ids[:, :-1])[0].float(), eval_ids[0, 1:])
            info[name] = (nll.exp().item(), held_mib(model))
        for _ in range(args.rounds):
            for name, model in models.items():

                def run(n, model=model):
                    out = model.generate(prompt, max_new_tokens=n, min_new_tokens=n, do_sample=False, eos_token_id=2)
                    return [o[args.prompt_len :].tolist() for o in out]

                r = measure(name, run, 1, args.prompt_len, args.new_tokens, 1)
                if name not in best or r["decode_tps"] > best[name]["decode_tps"]:
                    best[name] = r
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, {weights.name}")
    ref = best["fp32 (prepacked)"]
    print(f"{'variant':26s} {'decode tok/s':>12s} {'vs fp32':>8s} {'weights MiB':>11s} {'perplexity':>10s} same tokens")
    for name, r in best.items():
        same = sum(a == b for a, b in zip(r["rows"][0], ref["rows"][0]))
        ppl, mib = info[name]
        print(f"{name:26s} {r['decode_tps']:12.1f} {r['decode_tps'] / ref['decode_tps']:7.2f}x {mib:11.0f} "
              f"{ppl:10.3f} {same}/{args.new_tokens}")  # fmt: skip


if __name__ == "__main__":
    main()

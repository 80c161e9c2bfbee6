"""Reference data for the tokenizer tests: llama.cpp's vectors and seeded random unicode strings."""

from __future__ import annotations

import random
from pathlib import Path

from torchformers.tools.assets import fetch

REPO_ROOT = Path(__file__).resolve().parents[2]
LLAMA3_RESEARCH = REPO_ROOT / "research" / "llama3_1"


def reference_vectors(name: str) -> list[tuple[str, list[int]]]:
    """llama.cpp's test strings and the ids its reference tokenizer gives (no BOS)."""
    texts = fetch(f"vocab/ggml-vocab-{name}.gguf.inp").read_text(encoding="utf-8").split("\n__ggml_vocab_test__\n")
    lines = fetch(f"vocab/ggml-vocab-{name}.gguf.out").read_text(encoding="utf-8").split("\n")
    assert len(texts) == len(lines) == 47
    return [(text, [int(v) for v in line.split()]) for text, line in zip(texts, lines)]


def random_unicode_strings(count: int, seed: int) -> list[str]:
    """Seeded strings mixing ASCII words, whitespace runs, accents, CJK, emoji and any code point."""
    rng = random.Random(seed)
    pools = [
        "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ",
        "0123456789",
        " ",
        " \n\t\r",
        ".,;:!?'\"()[]{}-_/\\@#$%^&*+=<>|~`",
        "äöüßéèêçñåøÆŒ",
        "абвгдежзийклмнопрст",
        "的一是不了人我在有他这中大来上国个到说们为子和你地出道也时年",
        "😀😂🦙🚀👍🏽❤️‍🔥🇫🇷",
        "ا ب ت ث ج ح خ د ذ ر",
        "कखगघङचछजझञ",
    ]
    out = []
    for _ in range(count):
        chars = []
        for _ in range(rng.randint(0, 40)):
            if rng.random() < 0.08:
                code = rng.randint(1, 0x10FFFF)
                while 0xD800 <= code <= 0xDFFF:
                    code = rng.randint(1, 0x10FFFF)
                chars.append(chr(code))
            else:
                chars.append(rng.choice(rng.choice(pools)))
        out.append("".join(chars))
    return out

"""`python -m torchformers.chat --config X.yaml [overrides]`: the terminal chat, the same as
`run_mindformer.py --config X.yaml --run_mode chat`."""

from __future__ import annotations

import sys

from torchformers.cli import main

if __name__ == "__main__":
    sys.exit(main([*sys.argv[1:], "--run_mode", "chat"]))

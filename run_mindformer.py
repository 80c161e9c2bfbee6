#!/usr/bin/env python
"""Run training, finetuning, evaluation or inference from one YAML file.

    python run_mindformer.py --config configs/smollm2/predict_smollm2_135m.yaml --predict_data "Hello"

`python run_mindformer.py --help` lists every argument; the logic lives in `torchformers/cli.py`.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from torchformers.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())

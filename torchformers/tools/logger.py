"""The one logger: MindFormers-like lines, printed by rank 0 only, also written under `output_dir/log/`.

Line format follows MindFormers' `mindformers/tools/logger.py`:
`2024-05-01 10:00:00,123 - torchformers[run_mindformer.py:42] - INFO - message`.
Every rank logs to its own files once `set_log_dir` is called, as MindFormers lays them out:
`output_dir/log/rank_<r>/info.log` (every record) and, beside it, `error.log` (ERROR and CRITICAL
records only). Only rank 0 prints to the console unless `TORCHFORMERS_LOG_ALL_RANKS=1`.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

from torchformers.utils import get_rank

__all__ = ["get_rank", "logger", "set_log_dir"]

_FORMAT = "%(asctime)s - %(name)s[%(filename)s:%(lineno)d] - %(levelname)s - %(message)s"


def _build() -> logging.Logger:
    log = logging.getLogger("torchformers")
    log.setLevel(os.environ.get("TORCHFORMERS_LOG_LEVEL", "INFO").upper())
    log.propagate = False
    if get_rank() == 0 or os.environ.get("TORCHFORMERS_LOG_ALL_RANKS") == "1":
        handler = logging.StreamHandler(sys.stdout)
        fmt = _FORMAT if get_rank() == 0 else f"[rank {get_rank()}] {_FORMAT}"
        handler.setFormatter(logging.Formatter(fmt))
        log.addHandler(handler)
    else:
        log.addHandler(logging.NullHandler())
    return log


logger = _build()


def set_log_dir(output_dir: str | Path) -> Path:
    """Also write this rank's log lines to `output_dir/log/rank_<r>/info.log`, and its ERROR and CRITICAL
    lines to `error.log` beside it; returns the `info.log` path."""
    folder = Path(output_dir) / "log" / f"rank_{get_rank()}"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "info.log"
    wanted = {path.resolve(): logging.NOTSET, (folder / "error.log").resolve(): logging.ERROR}
    for handler in list(logger.handlers):
        if isinstance(handler, logging.FileHandler):
            if Path(handler.baseFilename) in wanted:
                wanted.pop(Path(handler.baseFilename))
                continue
            logger.removeHandler(handler)
            handler.close()
    for file, level in wanted.items():
        file_handler = logging.FileHandler(file, encoding="utf-8")
        file_handler.setLevel(level)
        file_handler.setFormatter(logging.Formatter(_FORMAT))
        logger.addHandler(file_handler)
    return path

"""The run context at MindFormers' module path (`mindformers/core/context`): a re-export.

The machinery lives in `torchformers.parallel.context`, below the trainer, so that the trainer and the
launcher share it without an upward import.
"""

from torchformers.parallel.context import (
    ContextConfig,
    ParallelContextConfig,
    build_context,
    init_context,
    resolve_device,
    set_seed,
)

__all__ = ["ContextConfig", "ParallelContextConfig", "build_context", "init_context", "resolve_device", "set_seed"]

"""MindFormers' `mindformers.tools`: the registry, the YAML config, the logger, context and small helpers.

As in MindFormers, `from torchformers.tools import logger` gives the logger object (MindFormers'
`mindformers/tools/__init__.py` imports `logger` from `mindformers.tools.logger`). The module stays
importable by its path: `from torchformers.tools.logger import logger, set_log_dir` reads it from
`sys.modules`, so only the attribute `torchformers.tools.logger` is the object, not the module.
"""

from torchformers.tools.logger import logger

__all__ = ["logger"]

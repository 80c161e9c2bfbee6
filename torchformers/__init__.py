"""torchformers: the MindFormers development workflow on PyTorch."""

__version__ = "0.1.0"

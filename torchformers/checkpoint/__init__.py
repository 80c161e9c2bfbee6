"""Checkpoint loading and saving by path; the format is taken from the file or folder.

Formats: safetensors (single or sharded), MindSpore `.ckpt` (no MindSpore needed), PyTorch `.bin`/`.pt`
(weights only unless `allow_pickle`), GGUF (dequantized, Hugging Face names) and Hugging Face model
folders. `convert` renames between Hugging Face and native (MindFormers) names with the key map of the
model family's `ModelSpec`.
"""

from torchformers.checkpoint.convert import (
    convert_checkpoint,
    gguf_to_native,
    hf_key_map,
    load_native_checkpoint,
)
from torchformers.checkpoint.errors import CheckpointError
from torchformers.checkpoint.formats import (
    CheckpointReader,
    check_tensors,
    detect_format,
    iter_checkpoint,
    load_checkpoint,
    open_checkpoint,
    save_checkpoint,
    write_checkpoint,
)

__all__ = [
    "CheckpointError",
    "CheckpointReader",
    "check_tensors",
    "convert_checkpoint",
    "detect_format",
    "gguf_to_native",
    "hf_key_map",
    "iter_checkpoint",
    "load_checkpoint",
    "load_native_checkpoint",
    "open_checkpoint",
    "save_checkpoint",
    "write_checkpoint",
]

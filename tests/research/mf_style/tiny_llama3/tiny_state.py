"""Test fixture, research-style helper module: state that `tiny_tokenizer.py` imports relatively."""

MARKER = "tiny_llama3 research-style tokenizer"
CREATED: list[str] = []

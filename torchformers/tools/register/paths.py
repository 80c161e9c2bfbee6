"""Where user paths resolve, and `--register_path`: the folder of external code, as MindFormers has it.

Used by every program that takes `--register_path` (the launcher, `convert_weight.py`, the preprocessing
and asset tools, `compare`): relative paths try the current directory first, then the repository root.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from types import ModuleType

from torchformers.errors import ConfigError
from torchformers.tools.register.register import REGISTER_PATH_ENV, import_module_from_folder

__all__ = ["REPO_ROOT", "import_register_path", "resolve_path", "use_register_path"]

REPO_ROOT = Path(__file__).resolve().parents[3]


def resolve_path(path: str, what: str, must_be_dir: bool = False) -> Path:
    """Resolve against the current directory first, then the repository root."""
    candidates = [Path(path)] if os.path.isabs(path) else [Path.cwd() / path, REPO_ROOT / path]
    for candidate in candidates:
        if candidate.is_dir() if must_be_dir else candidate.is_file():
            return candidate.resolve()
    tried = " or ".join(str(c) for c in candidates)
    kind = "folder" if must_be_dir else "file"
    raise ConfigError(f"{what} {path!r}: no such {kind} (tried {tried})")


def use_register_path(path: str, what: str = "--register_path") -> Path:
    """Resolve a register path (see `resolve_path`), set `REGISTER_PATH` for `auto_register` and put the
    folder on `sys.path`, as MindFormers' `--register_path` does; returns the folder."""
    folder = resolve_path(os.path.expanduser(path), what, must_be_dir=True)
    os.environ[REGISTER_PATH_ENV] = str(folder)
    if str(folder) not in sys.path:
        sys.path.append(str(folder))
    return folder


def import_register_path(path: str, what: str = "--register_path") -> list[ModuleType]:
    """`use_register_path`, then import every module file directly in the folder (`*.py`, except names
    starting with "_" or "test_"), so the registration calls in them run (`register_model_spec` and the
    registry decorators).

    For the tools without a YAML to name modules through `auto_register` (`convert_weight.py`, the asset
    fetcher). Modules are imported as `auto_register` imports them (as modules of the folder's package, also
    under their plain names; once per file).
    """
    folder = use_register_path(path, what)
    modules = []
    for file in sorted(folder.glob("*.py")):
        if not file.name.startswith(("_", "test_")):
            modules.append(import_module_from_folder(folder, file.stem))
    return modules

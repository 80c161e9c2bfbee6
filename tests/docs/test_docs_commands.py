"""The shell commands in docs/*.md run, so the documentation does not rot.

Every ```bash block of a page is run, in order, as one `bash -euo pipefail` script in a scratch folder
that mirrors the repository's top level through symbolic links (so `python run_mindformer.py
--config configs/...` works as written and outputs land in the scratch folder). ```sh blocks are
illustrations that need hardware the test machine lacks (several GPUs) and are not run. A page marked
`<!-- docs-test: slow -->` runs only with `-m slow`.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
DOCS = sorted((REPO / "docs").glob("*.md"))
BLOCK = re.compile(r"^```bash\n(.*?)^```", re.DOTALL | re.MULTILINE)
SKIP_LINKS = {".git", "output", "text_generation_result.txt", "checkpoint_download", ".venv"}


def bash_blocks(page: Path) -> list[str]:
    return BLOCK.findall(page.read_text(encoding="utf-8"))


def _params():
    for page in DOCS:
        if not bash_blocks(page):
            continue
        slow = "<!-- docs-test: slow -->" in page.read_text(encoding="utf-8")
        yield pytest.param(page, id=page.stem, marks=[pytest.mark.slow] if slow else [])


@pytest.mark.parametrize("page", list(_params()))
def test_page_commands_run(page, tmp_path):
    for entry in REPO.iterdir():
        if entry.name not in SKIP_LINKS:
            (tmp_path / entry.name).symlink_to(entry)
    script = "\n".join(bash_blocks(page))
    env = {k: v for k, v in os.environ.items() if k not in ("REGISTER_PATH", "TORCHFORMERS_DEBUG")}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["PYTHONPATH"] = str(REPO)
    result = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, f"{page.name}:\n{result.stdout[-3000:]}\n{result.stderr[-4000:]}"


def test_every_page_is_linked_from_the_index():
    index = (REPO / "docs" / "README.md").read_text(encoding="utf-8")
    for page in DOCS:
        if page.name != "README.md":
            assert f"({page.name})" in index, f"docs/README.md does not link {page.name}"

"""Every docs/ page starts with an example that runs as written: its first fenced block, run in a fresh folder that
holds the repository's configs/ and benchmarks/ (as a checkout does), with this environment's `connectorlab` first
on PATH. A page whose example breaks fails here, not in a reader's terminal."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = sorted((ROOT / "docs").glob("*.md"))
FENCE = re.compile(r"^```(\w+)\n(.*?)^```", re.S | re.M)


def first_example(page: Path) -> tuple[str, str]:
    found = FENCE.search(page.read_text())
    assert found, f"{page.name}: no fenced example"
    return found.group(1), found.group(2)


def test_every_page_starts_with_an_example():
    for page in PAGES:
        text = page.read_text()
        found = FENCE.search(text)
        assert found, page.name
        before = text[:found.start()].strip().splitlines()
        prose = [line for line in before if line.strip() and not line.startswith("#")]
        assert len(prose) <= 3, f"{page.name}: {len(prose)} lines of prose before its first example"


def test_readme_is_short_and_links_every_page():
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) < 200
    for page in PAGES:
        assert f"docs/{page.name}" in readme, page.name


@pytest.mark.slow
@pytest.mark.parametrize("page", PAGES, ids=[p.stem for p in PAGES])
def test_first_example_runs(page, tmp_path):
    lang, code = first_example(page)
    for name in ("configs", "benchmarks", "tests"):
        (tmp_path / name).symlink_to(ROOT / name)
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
           "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
    cmd = ["bash", "-euo", "pipefail", "-c", code] if lang in ("bash", "sh") else [sys.executable, "-c", code]
    assert lang in ("bash", "sh", "python"), f"{page.name}: first example is {lang}"
    res = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, f"{page.name}:\n{res.stdout[-2000:]}\n{res.stderr[-3000:]}"
    assert res.stdout.strip(), f"{page.name}: the example printed nothing"

"""The docs stay true to the tree: every module in the architecture page, links that resolve."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def test_every_module_is_on_the_architecture_page():
    text = (ROOT / "docs" / "architecture.md").read_text()
    modules = [
        p.relative_to(ROOT).as_posix()
        for pkg in ("server", "client_demo", "training", "bench")
        for p in sorted((ROOT / pkg).rglob("*.py"))
        if "node_modules" not in p.parts
    ]
    missing = [m for m in modules if f"- `{m}`" not in text]
    assert not missing, f"docs/architecture.md does not list {missing}"
    listed = re.findall(r"^- `((?:server|client_demo|training|bench)/[\w/]+\.py)`", text, re.M)
    gone = [m for m in listed if not (ROOT / m).exists()]
    assert not gone, f"docs/architecture.md lists modules that are gone: {gone}"


def test_the_readme_is_a_first_read():
    assert (ROOT / "README.md").read_text().count("\n") <= 200


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_relative_links_resolve(page):
    text = page.read_text()
    broken = []
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if re.match(r"[a-z]+:", target) or target.startswith("#"):
            continue
        path = target.split("#", 1)[0]
        if not (page.parent / path).exists():
            broken.append(target)
    assert not broken, f"{page.name}: links to missing files {broken}"

"""The README stays a guide and the docs stay whole: every relative link in README.md, docs/*.md
and benchmarks/README.md reaches a file and, where it names one, an anchor of that page; the
README opens with the two commands and fits about 300 lines; every config key is documented."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md")),
         REPO / "benchmarks" / "README.md"]
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
ANCHOR_TAG = re.compile(r"<a\s+(?:id|name)=\"([^\"]+)\"")


def prose_lines(text: str) -> list[str]:
    """The page's lines outside fenced code blocks, inline code removed (links and headings in
    code are not links and headings)."""
    lines, fenced = [], False
    for line in text.splitlines():
        if line.lstrip().startswith("```"):
            fenced = not fenced
            continue
        if not fenced:
            lines.append(re.sub(r"`[^`]*`", "", line))
    return lines


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def anchors(page: Path) -> set[str]:
    text = page.read_text()
    found, seen = set(ANCHOR_TAG.findall(text)), {}
    for line in prose_lines(text.replace("`", "")):
        m = re.match(r"#{1,6}\s+(.*)", line)
        if m:
            base = slug(m.group(1))
            n = seen.get(base, 0)
            seen[base] = n + 1
            found.add(base if n == 0 else f"{base}-{n}")
    return found


def links(page: Path) -> list[str]:
    return [t for line in prose_lines(page.read_text()) for t in LINK.findall(line)
            if not re.match(r"[a-z]+:", t)]


def test_slug_follows_github():
    assert slug("Data: ImageNet as you downloaded it → .beton") == \
        "data-imagenet-as-you-downloaded-it--beton"
    assert slug("Writer keys (cfg)") == "writer-keys-cfg"
    page_text = "# T\n\n## A b\n\n```\n# not a heading\n```\n\n## A b\n<a id=\"x_y\"></a>\n"
    assert prose_lines(page_text) == ["# T", "", "## A b", "", "", "## A b", '<a id="x_y"></a>']


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(REPO)))
def test_every_relative_link_resolves(page):
    broken = []
    for target in links(page):
        path, _, anchor = target.partition("#")
        dest = (page.parent / path).resolve() if path else page
        if not dest.exists():
            broken.append(f"{target}: no file {dest.relative_to(REPO)}")
        elif anchor and anchor not in anchors(dest):
            broken.append(f"{target}: no anchor #{anchor} in {dest.relative_to(REPO)}")
    assert not broken, f"{page.name}: " + "; ".join(broken)


def test_readme_is_a_guide():
    text = (REPO / "README.md").read_text()
    assert len(text.splitlines()) <= 300
    first_block = text.split("```")[1].splitlines()
    commands = [line.split("#")[0].strip() for line in first_block[1:] if line.strip()]
    assert commands[:2] == ["make demo", "make test"]
    assert text.index("make demo") < text.index("\n## ")  # before the first section
    for page in sorted((REPO / "docs").glob("*.md")):
        assert f"(docs/{page.name}" in text, f"README does not link docs/{page.name}"


def test_every_key_is_in_the_configuration_page():
    from fastargs import Config

    from ffcv_utils.train.config import declare_sections
    from ffcv_utils.write.cli import PARAMS

    page = (REPO / "docs" / "configuration.md").read_text()
    keys = [".".join(path) for path in declare_sections(Config()).entries]
    keys += [f"cfg.{name}" for name in PARAMS]
    missing = [k for k in keys if f"`{k}`" not in page]
    assert not missing, f"docs/configuration.md lacks {missing}"

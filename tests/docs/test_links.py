"""Offline link check of README.md and the docs site's pages (no network): every relative link
names a file that exists, and every #anchor a heading of its page, as GitHub and the site render it.

`make docs` builds the site strictly as well, but this runs in `make test` without the generator,
and covers README.md, which the site does not contain. External links (http, mailto) are not
followed: CI has no internet."""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import unquote

import pytest

REPO = Path(__file__).resolve().parents[2]
DOCS = REPO / "docs"
PAGES = [REPO / "README.md", *sorted(DOCS.glob("*.md"))]

FENCE = re.compile(r"^```.*?^```", re.MULTILINE | re.DOTALL)
CODE_SPAN = re.compile(r"(`+).+?\1", re.DOTALL)
LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$", re.MULTILINE)


def prose(text: str) -> str:
    """The text without code: links and headings inside code blocks are not links or headings."""
    return FENCE.sub("", text)


def site_slug(heading: str) -> str:
    """Python-Markdown's toc slug, which the site's generator (Zensical) gives headings."""
    text = CODE_SPAN.sub(lambda m: m.group(0).strip("`"), heading)
    text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode()
    text = re.sub(r"[^\w\s-]", "", text).strip().lower()
    return re.sub(r"[-\s]+", "-", text)


def github_slug(heading: str) -> str:
    """GitHub's anchor for a heading, where README.md and the pages are read too."""
    text = CODE_SPAN.sub(lambda m: m.group(0).strip("`"), heading).strip().lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(page: Path, slug: Callable[[str], str], separator: str) -> set[str]:
    """Every heading's anchor on a page; a repeated one is numbered, as each renderer numbers it."""
    seen: set[str] = set()
    for match in HEADING.finditer(prose(page.read_text())):
        base = anchor = slug(match.group(2))
        count = 0
        while anchor in seen:
            count += 1
            anchor = f"{base}{separator}{count}"
        seen.add(anchor)
    return seen


def links(page: Path) -> Iterator[str]:
    for paragraph in prose(page.read_text()).split("\n\n"):
        yield from LINK.findall(CODE_SPAN.sub("", paragraph))


def broken(page: Path, href: str, root: Path = REPO) -> str | None:
    """Why a link from `page` does not resolve, or None when it does."""
    if re.match(r"^[a-z][a-z+.-]*:", href):  # http:, https:, mailto:
        return None
    path, _, fragment = unquote(href).partition("#")
    target = (page.parent / path).resolve() if path else page
    if not target.exists():
        return f"{path} does not exist"
    if root not in target.parents:
        return f"{path} is outside the repository"
    if fragment and target.suffix == ".md":
        for slug, separator, where in ((site_slug, "_", "the site"), (github_slug, "-", "GitHub")):
            if fragment not in anchors(target, slug, separator):
                return f"#{fragment} is no heading of {target.name} on {where}"
    return None


@pytest.mark.parametrize("page", PAGES, ids=lambda page: str(page.relative_to(REPO)))
def test_every_relative_link_and_anchor_resolves(page: Path):
    problems = [f"{href}: {why}" for href in links(page) if (why := broken(page, href))]
    assert not problems, f"{page.relative_to(REPO)}:\n" + "\n".join(problems)


def nav_pages(entries: list) -> Iterator[str]:
    for entry in entries:
        value = entry if isinstance(entry, str) else next(iter(entry.values()))
        yield from ([value] if isinstance(value, str) else nav_pages(value))


def test_every_page_is_in_the_sites_navigation_and_every_entry_is_a_page():
    tomllib = pytest.importorskip("tomllib", reason="Python 3.11's tomllib reads zensical.toml")
    nav = list(nav_pages(tomllib.loads((REPO / "zensical.toml").read_text())["project"]["nav"]))
    assert sorted(nav) == sorted(page.name for page in DOCS.glob("*.md"))
    assert len(nav) == len(set(nav)), "a page twice in the navigation"


def test_the_checker_finds_a_broken_file_and_a_broken_anchor(tmp_path: Path):
    """The check itself: it would fail on what it is meant to catch."""
    (tmp_path / "other.md").write_text("# Other\n\n## Real `heading`: here\n")
    page = tmp_path / "page.md"
    page.write_text("[ok](other.md#real-heading-here) [bad](other.md#nope) [gone](missing.md)\n"
                    "`[code](ignored.md)`\n\n```\n[fenced](ignored.md)\n```\n")
    assert [broken(page, href, tmp_path) for href in links(page)] == [
        None, "#nope is no heading of other.md on the site", "missing.md does not exist"]

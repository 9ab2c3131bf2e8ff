"""The documentation holds together: the keys page is the one the schema gives, every relative link reaches a file
(and a heading, where it names one), and the README stays short. File reads only."""

import re
from pathlib import Path

from tests.conftest import REPO

PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md")), REPO / "benchmarks" / "RESULTS.md"]
LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)\)|!\[[^\]]*\]\(([^)\s]+)\)")


def test_configuration_page_is_the_one_the_schema_gives():
    from qvedit.settings.reference import PAGE, REGENERATE, render

    assert PAGE.read_text() == render(), f"docs/configuration.md differs from the schema's: run `{REGENERATE}`"


def test_every_config_group_has_a_row_in_the_groups_table():
    from qvedit.settings.reference import render

    groups = render().split("## Groups", 1)[1].split("## Top-level keys", 1)[0]
    folders = [p.name for p in (REPO / "conf").iterdir() if p.is_dir() and p.name != "hydra"] + ["hydra/launcher"]
    assert [name for name in folders if f"| `{name}` |" not in groups] == []


def anchors(page: Path) -> set[str]:
    """GitHub's anchors of a Markdown file's headings: lower case, punctuation but - and _ dropped, spaces to -."""
    found = set()
    fenced = False
    for line in page.read_text().splitlines():
        fenced ^= line.startswith("```")
        if not fenced and line.startswith("#"):
            title = line.lstrip("#").strip().lower()
            found.add(re.sub(r"[^\w\- ]", "", title).replace(" ", "-"))
    return found


def code_free(text: str) -> str:
    """The text without fenced blocks and inline code, where brackets are not links."""
    text = re.sub(r"```.*?```", "", text, flags=re.S)
    return re.sub(r"`[^`\n]*`", "", text)


def broken_links(page: Path, root: Path = REPO) -> list[str]:
    broken = []
    for match in LINK.finditer(code_free(page.read_text())):
        target = match.group(1) or match.group(2)
        if re.match(r"[a-z]+:", target):  # https:, mailto:
            continue
        path, _, anchor = target.partition("#")
        file = (page.parent / path).resolve() if path else page
        if not file.exists():
            broken.append(f"{page.relative_to(root)}: {target} (no file {path})")
        elif anchor and file.suffix == ".md" and anchor not in anchors(file):
            broken.append(f"{page.relative_to(root)}: {target} (no heading #{anchor} in {file.relative_to(root)})")
    return broken


def test_every_relative_link_in_the_docs_resolves():
    assert all(page.exists() for page in PAGES)
    broken = [problem for page in PAGES for problem in broken_links(page)]
    assert not broken, broken


def test_the_link_check_finds_a_broken_link(tmp_path):
    (tmp_path / "there.md").write_text("# A heading (`x`)\n")
    page = tmp_path / "page.md"
    page.write_text("[ok](there.md#a-heading-x) [gone](nowhere.md) [bad anchor](there.md#other) `[code](x.md)`\n"
                    "```\n[fenced](y.md)\n```\n![img](pic.png) [web](https://example.org)\n")
    problems = [p.split(": ", 1)[1] for p in broken_links(page, tmp_path)]
    assert problems == ["nowhere.md (no file nowhere.md)", "there.md#other (no heading #other in there.md)",
                        "pic.png (no file pic.png)"]


def test_the_readme_is_short():
    lines = (REPO / "README.md").read_text().count("\n")
    assert lines <= 250, f"README.md has {lines} lines: move detail into docs/ (at most 250)"

"""The documentation holds together: README.md stays short and links every file of docs/, and every relative link in
README.md and docs/*.md ([text](path), [text](path#anchor), [text](#anchor)) names a file that exists, relative to the
linking file, and a heading of that file by GitHub's anchor rules."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.support.paths import ROOT

README = ROOT / "README.md"
README_MAX_BYTES = 12_000

LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\[\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
HEADING = re.compile(r"^ {0,3}(#{1,6})\s+(.*?)(?:\s+#+)?\s*$")
FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})")
CODE_SPAN = re.compile(r"(`+)(?:(?!\1).)+?\1")


def doc_files() -> list[Path]:
    return [README, *sorted((ROOT / "docs").glob("*.md"))]


def prose_lines(text: str) -> list[str]:
    """The lines outside fenced code blocks, with inline code spans blanked (links and headings live only there)."""
    lines, fence = [], None
    for line in text.splitlines():
        opened = FENCE.match(line)
        if fence is None and opened:
            fence = opened.group(1)
        elif fence is not None:
            if opened and opened.group(1)[0] == fence[0] and len(opened.group(1)) >= len(fence):
                fence = None
        else:
            lines.append(line)
    return lines


def anchor(heading: str) -> str:
    """GitHub's anchor for a heading: the text without markup, lowercase, punctuation except - and _ removed, each
    space a -."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link in a heading counts by its text
    return re.sub(r"[^\w\- ]", "", text.strip().lower()).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    """Every anchor of a markdown file's headings; a repeated heading gets -1, -2, ... as on GitHub."""
    seen: dict[str, int] = {}
    found = set()
    for line in prose_lines(path.read_text()):
        heading = HEADING.match(line)
        if heading:
            base = anchor(heading.group(2))
            count = seen.get(base, 0)
            seen[base] = count + 1
            found.add(base if count == 0 else f"{base}-{count}")
    return found


def links(path: Path) -> list[str]:
    """Every link target of a markdown file, outside code."""
    found = []
    for line in prose_lines(path.read_text()):
        found += LINK.findall(CODE_SPAN.sub(lambda span: "code", line))
    return found


def is_relative(target: str) -> bool:
    return not re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*:", target) and not target.startswith("//")


def broken_links(path: Path, root: Path = ROOT) -> list[str]:
    """What is wrong with each relative link of a markdown file: a missing file, or an anchor no heading has."""
    broken = []
    for target in filter(is_relative, links(path)):
        file, _, fragment = target.partition("#")
        linked = (path.parent / file).resolve() if file else path
        name = f"{path.relative_to(root)}: ({target})"
        if not linked.is_file():
            broken.append(f"{name}: no file {linked}")
        elif fragment and linked.suffix == ".md" and fragment not in anchors(linked):
            broken.append(f"{name}: no heading of {linked.name} has the anchor #{fragment}")
    return broken


def test_every_relative_link_resolves_to_a_file_and_a_heading():
    broken = [problem for path in doc_files() for problem in broken_links(path)]
    assert not broken, "\n".join(broken)


def test_readme_is_short():
    size = len(README.read_bytes())
    assert size <= README_MAX_BYTES, f"README.md is {size} bytes; move reference text to docs/"


def test_every_docs_file_is_linked_from_the_readme():
    linked = {(ROOT / target.partition("#")[0]).resolve() for target in filter(is_relative, links(README))}
    unlinked = [path.name for path in doc_files()[1:] if path.resolve() not in linked]
    assert not unlinked, f"README.md links no {unlinked}"


def test_the_link_check_knows_github_anchors_and_catches_a_broken_link(tmp_path):
    """The checker itself: GitHub's anchors (backticks, colons, apostrophes dropped; a repeated heading numbered),
    headings in code blocks ignored, and a missing file or anchor reported."""
    assert anchor("`[taxi] store`: the S3 store's *settings*") == "taxi-store-the-s3-stores-settings"
    assert anchor("Scale-out and tuning_defaults") == "scale-out-and-tuning_defaults"
    page = tmp_path / "page.md"
    page.write_text("# Title\n\n## Part\n\n## Part\n\n```console\n# not a heading\n```\n\n"
                    "[ok](#part-1) [ok](page.md#title) `[not a link](nowhere.md)` [bad](#not-a-heading) "
                    "[bad](#part-2) [bad](other.md) [web](https://example.org/x.md)\n")
    problems = broken_links(page, tmp_path)
    assert anchors(page) == {"title", "part", "part-1"}
    assert [problem.split(": ")[1] for problem in problems] == ["(#not-a-heading)", "(#part-2)", "(other.md)"]


def table_rows(path: Path, heading: str) -> list[list[str]]:
    """The cells of the first markdown table under `heading` (a line starting with #), header and rule left out."""
    lines = prose_lines(path.read_text())
    start = next(i for i, line in enumerate(lines) if HEADING.match(line) and HEADING.match(line).group(2) == heading)
    rows = []
    for line in lines[start + 1:]:
        if line.startswith("|"):
            rows.append([cell.strip() for cell in line.strip().strip("|").split("|")])
        elif rows or HEADING.match(line):
            break
    return rows[2:]


def test_the_store_layout_table_is_the_layout_module():
    """docs/pipeline.md "Store layout" lists exactly the paths taxi.layout declares, as written there."""
    from taxi import layout

    listed = [row[0].strip("`") for row in table_rows(ROOT / "docs" / "pipeline.md", "Store layout")]
    assert listed == layout.templates()


@pytest.mark.parametrize("heading,family", [("Tuning defaults", "TuneHyperparams"), ("Data checks", "CleanMonth"),
                                            ("Champion decision", "RegisterModel")])
def test_the_settings_tables_give_the_code_s_defaults(heading, family):
    """Each table of docs/configuration.md gives every setting of its task the default the code has, and no other."""
    from taxi import tasks

    documented = {}
    for row in table_rows(ROOT / "docs" / "configuration.md", heading):
        names = re.findall(r"`(\w+)`", row[0])
        documented.update(zip(names, [value.strip() for value in row[1].split(",")]))
    params = dict(getattr(tasks, family).get_params())
    assert set(documented) == set(params) - {"color", "year", "month", "search_space"}
    for name, value in documented.items():
        default = params[name]._default
        assert (str(default).lower() if isinstance(default, bool) else str(default)) == value, name


def test_the_retention_table_gives_the_code_s_defaults():
    """docs/operations.md "Retention settings" gives every `[gc]` setting the default taxi.retention has."""
    from taxi.retention import RetentionConfig

    documented = {row[0].strip("`"): row[1] for row in table_rows(ROOT / "docs" / "operations.md",
                                                                  "Retention settings")}
    assert documented == {name: str(param._default) for name, param in RetentionConfig.get_params()}

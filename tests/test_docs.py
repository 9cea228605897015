"""The README and docs/ stay true to the tree (issue 12, point 7).

- every relative link (and image) in README.md and docs/*.md names a file that exists, and an
  anchor it names is a heading of that file (GitHub's heading slugs);
- every path the README's architecture map names exists;
- the README's test command is the one CI runs (.ci/run);
- measured figures live in docs/results.md only: no "<number> dB", "CPU-s" or "s/iter" figure
  in the README, the other docs pages, the package's docstrings or the protocol files.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Iterator, List, Set, Tuple

import pytest

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
RESULTS = REPO / "docs" / "results.md"

FENCE = re.compile(r"^(```|~~~).*?^\1[^\n]*$", re.M | re.S)
INLINE_CODE = re.compile(r"`[^`\n]*`")
LINK = re.compile(r"!?\[[^\]\n]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$", re.M)


def doc_files() -> List[Path]:
    return [README, *sorted((REPO / "docs").glob("*.md"))]


def prose(text: str) -> str:
    """Markdown without fenced code blocks and inline code (links in code are not links)."""
    return INLINE_CODE.sub("", FENCE.sub("", text))


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link in a heading keeps its text
    text = text.strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(path: Path) -> Set[str]:
    seen: dict = {}
    out = set()
    for _, title in HEADING.findall(FENCE.sub("", path.read_text(encoding="utf-8"))):
        s = slug(title)
        n = seen.get(s, 0)
        out.add(s if n == 0 else f"{s}-{n}")
        seen[s] = n + 1
    return out


def relative_links(path: Path) -> Iterator[Tuple[str, str]]:
    """(target, anchor) of every link that is not an absolute URL."""
    for target in LINK.findall(prose(path.read_text(encoding="utf-8"))):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target, re.I):  # http:, https:, mailto:
            continue
        file_part, _, anchor = target.partition("#")
        yield file_part, anchor


def test_the_helpers_read_markdown_as_github_does():
    assert slug("Which E is E-NeRF? The orientation study") == "which-e-is-e-nerf-the-orientation-study"
    assert slug("Cost of one `cpu` protocol run") == "cost-of-one-cpu-protocol-run"
    assert slug("E-NeRF-small vs NeRF-small on fern (3000 steps)") == "e-nerf-small-vs-nerf-small-on-fern-3000-steps"
    text = "see [a](docs/x.md#y) and ![i](img.png), not `[b](c.md)` nor\n```\n[d](e.md)\n```\n"
    assert LINK.findall(prose(text)) == ["docs/x.md#y", "img.png"]


@pytest.mark.parametrize("doc", doc_files(), ids=lambda p: str(p.relative_to(REPO)))
def test_every_relative_link_points_to_an_existing_file_and_heading(doc: Path):
    links = list(relative_links(doc))
    problems = []
    for file_part, anchor in links:
        target = (doc.parent / file_part).resolve() if file_part else doc
        if not target.exists():
            problems.append(f"{file_part}: no such file")
            continue
        if anchor and target.suffix == ".md" and anchor not in anchors(target):
            problems.append(f"{file_part}#{anchor}: no such heading in {target.relative_to(REPO)}")
    assert not problems, f"{doc.relative_to(REPO)}: " + "; ".join(problems)


def test_the_readme_links_every_docs_page():
    linked = {(REPO / f).resolve() for f, _ in relative_links(README) if f}
    pages = {p.resolve() for p in (REPO / "docs").glob("*.md")}
    assert pages - linked == set(), "docs pages the README does not link: " + ", ".join(
        sorted(str(p.relative_to(REPO)) for p in pages - linked))


def architecture_section() -> str:
    text = README.read_text(encoding="utf-8")
    m = re.search(r"^## Architecture[^\n]*\n(.*?)(?=^## )", text, re.M | re.S)
    assert m, "README has no '## Architecture' section"
    return m.group(1)


def test_every_path_in_the_architecture_map_exists():
    section = architecture_section()
    paths = set()
    for span in re.findall(r"`([^`\n]+)`", FENCE.sub("", section)):
        if "/" in span and not re.search(r"[\s<>*]", span):
            paths.add(span)
    for block in re.findall(r"^```[^\n]*\n(.*?)^```", section, re.M | re.S):  # the picture
        paths.update(re.findall(r"(?<![\w/.-])((?:wcnerf|configs|viewer|scripts|data|tests|docs)/[\w./-]*)", block))
    # a file named bare in a table row belongs to that row's folder (`wcnerf/plugin/` ... `ndc.py`)
    for folder, rest in re.findall(r"^\|\s*`([^`\s]+/)`\s*\|(.*)$", section, re.M):
        for span in re.findall(r"`([^`/\s]+\.(?:py|md|yaml))`", rest):
            paths.add(folder + span)
    assert {"wcnerf/conditioning/", "wcnerf/plugin/", "wcnerf/eval/", "wcnerf/plugin/ndc.py"} <= paths, paths
    missing = sorted(p for p in paths if not (REPO / p.rstrip("/.")).exists())
    assert not missing, f"paths in the README's architecture map that do not exist: {missing}"


def test_the_readme_test_command_is_the_one_ci_runs():
    readme = README.read_text(encoding="utf-8")
    ci = (REPO / ".ci" / "run").read_text(encoding="utf-8")
    (command,) = [line.strip() for line in ci.splitlines() if line.strip().startswith(".venv/bin/python -m pytest")]
    assert f"bash scripts/setup.sh && {command}" in readme
    assert "bash scripts/setup.sh && .venv/bin/python scripts/train_enerf.py" in readme
    assert "bash scripts/setup.sh" in ci and "--durations=30" in command  # the slowest tests in every CI log


def test_the_readme_is_a_map():
    assert len(README.read_text(encoding="utf-8").splitlines()) <= 200


FIGURE = re.compile(r"\d\s?dB\b|\d\s?CPU-s\b|\d\s?s/iter\b|\d\s?core-s(?:econds)?\b|\d\s?CPU-(?:seconds|minutes)\b")


def figure_homes() -> List[Path]:
    files = [p for p in doc_files() if p != RESULTS]
    files += sorted((REPO / "wcnerf").rglob("*.py"))
    files += sorted((REPO / "configs").rglob("*.yaml"))
    return files


def test_measured_figures_live_only_in_the_results_page():
    assert RESULTS.exists()
    found = []
    for path in figure_homes():
        for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if FIGURE.search(line):
                found.append(f"{path.relative_to(REPO)}:{i}: {line.strip()}")
    assert not found, "measured figures outside docs/results.md:\n" + "\n".join(found)

"""The documentation a newcomer reads: every relative link in README.md and docs/*.md resolves
(files exist; ``#anchors`` name a heading of the target, slugged as GitHub does), the README keeps
its quick start, and the README's Python example runs as written."""

from __future__ import annotations

import re
import subprocess
import sys
import unicodedata
from pathlib import Path
from urllib.parse import unquote

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
PAGES = [README, *sorted((ROOT / "docs").glob("*.md"))]

FENCE = re.compile(r"^\s*(```|~~~)")
HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")
INLINE_CODE = re.compile(r"`[^`]*`")
# [text](target) and ![alt](target), optionally with a "title"; target may be <...>
LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
REFERENCE = re.compile(r"^\s{0,3}\[[^\]]+\]:\s*<?(\S+?)>?(?:\s+\".*\")?\s*$")
HTML_LINK = re.compile(r"""<(?:a|img)\s[^>]*?(?:href|src)\s*=\s*["']([^"']+)["']""", re.IGNORECASE)


def _prose(text: str) -> list[tuple[int, str]]:
    """(line number, line) outside fenced code blocks."""
    lines, fenced = [], None
    for number, line in enumerate(text.splitlines(), 1):
        match = FENCE.match(line)
        if match:
            if fenced is None:
                fenced = match.group(1)
            elif match.group(1) == fenced:
                fenced = None
            continue
        if fenced is None:
            lines.append((number, line))
    return lines


def slug(heading: str) -> str:
    """GitHub's anchor for a heading text (github-slugger): lower case, markup and punctuation
    dropped except ``-`` and ``_``, each space a hyphen."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link's text only
    text = re.sub(r"<[^>]+>", "", text).lower()
    kept = []
    for ch in text:
        if ch in "-_ " or unicodedata.category(ch)[0] in "LNM":
            kept.append(ch)
    return "".join(kept).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    """Every anchor GitHub gives the headings of ``path`` (repeats get -1, -2, ...)."""
    seen: dict[str, int] = {}
    found = set()
    for _, line in _prose(path.read_text(encoding="utf-8")):
        match = HEADING.match(line)
        if not match:
            continue
        base = slug(match.group(2))
        count = seen.get(base, 0)
        seen[base] = count + 1
        found.add(base if count == 0 else f"{base}-{count}")
    return found


def links(path: Path) -> list[tuple[int, str]]:
    """(line, target) of every link and image in ``path``'s prose (code spans and blocks skipped)."""
    found = []
    for number, line in _prose(path.read_text(encoding="utf-8")):
        reference = REFERENCE.match(line)
        if reference:
            found.append((number, reference.group(1)))
            continue
        line = INLINE_CODE.sub("", line)
        found += [(number, target) for target in LINK.findall(line)]
        found += [(number, target) for target in HTML_LINK.findall(line)]
    return found


def _relative(target: str) -> bool:
    return not re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*:", target) and not target.startswith("//")


def test_slug_matches_github() -> None:
    assert slug("Quick start") == "quick-start"
    assert slug("Workers on one machine: `--workers K`") == "workers-on-one-machine---workers-k"
    assert slug("Measured (`benchmarks/bench_pruning.py`)") == "measured-benchmarksbench_pruningpy"
    assert slug('What one "layer" of the walk is') == "what-one-layer-of-the-walk-is"
    assert slug("The dashboard: read-only, and Optuna's best trials") == "the-dashboard-read-only-and-optunas-best-trials"


def test_link_parser_sees_every_kind_of_link(tmp_path: Path) -> None:
    page = tmp_path / "page.md"
    page.write_text(
        "# Title\n[a](a.md) and ![img](img/x.png \"t\") and `[not](code.md)`\n"
        "```\n[not](fenced.md)\n```\n[ref]: ref.md\n<a href=\"html.md\">x</a> [web](https://example.com)\n"
    )
    assert sorted(target for _, target in links(page)) == sorted(
        ["a.md", "img/x.png", "ref.md", "html.md", "https://example.com"])


def broken_links(page: Path) -> list[str]:
    """The relative links of ``page`` that lead nowhere: a missing file, or an anchor that is no
    heading of the target."""
    broken = []
    for number, target in links(page):
        if not _relative(target):
            continue
        file_part, _, anchor = target.partition("#")
        destination = (page.parent / unquote(file_part)).resolve() if file_part else page
        where = f"{page.name}:{number}: {target}"
        if not destination.exists():
            broken.append(f"{where} (no such file)")
        elif anchor and destination.suffix != ".md":
            broken.append(f"{where} (an anchor into a file that is not Markdown)")
        elif anchor and unquote(anchor) not in anchors(destination):
            broken.append(f"{where} (no heading with anchor #{anchor} in {destination.name})")
    return broken


def test_broken_links_are_found(tmp_path: Path) -> None:
    (tmp_path / "other.md").write_text("# Other page\n## A `code` heading: yes\n## A `code` heading: yes\n")
    page = tmp_path / "page.md"
    page.write_text(
        "# Here\n[ok](other.md#a-code-heading-yes-1) [ok](#here) [ok](other.md)\n"
        "[gone](missing.md) [bad anchor](other.md#nowhere) [bad local](#there)\n"
    )
    assert [line.split(": ", 1)[1].split(" (")[0] for line in broken_links(page)] == [
        "missing.md", "other.md#nowhere", "#there"]


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve(page: Path) -> None:
    broken = broken_links(page)
    assert not broken, f"broken links in {page.relative_to(ROOT)}:\n" + "\n".join(broken)


def test_readme_keeps_a_quick_start() -> None:
    headings = [line for _, line in _prose(README.read_text(encoding="utf-8")) if HEADING.match(line)]
    assert any(re.match(r"^#+ .*quick ?start", line, re.IGNORECASE) for line in headings), headings


def _python_blocks(text: str) -> list[str]:
    return re.findall(r"^```python[ \t]*\n(.*?)^```[ \t]*$", text, re.MULTILINE | re.DOTALL)


def test_readme_python_example_runs(tmp_path: Path) -> None:
    """The README's one Python block, executed as a newcomer would paste it (in a scratch folder,
    so nothing it might write lands in the checkout)."""
    blocks = _python_blocks(README.read_text(encoding="utf-8"))
    assert len(blocks) == 1, f"the README should show the Python API in one example, found {len(blocks)} blocks"
    script = tmp_path / "readme_example.py"
    script.write_text(blocks[0], encoding="utf-8")
    done = subprocess.run([sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Both constraints met" in done.stdout, done.stdout
    printed = done.stdout.strip().splitlines()[-1]
    assert printed == "{'fc1': 0.9}", f"the README's comment promises {{'fc1': 0.9}}, got {printed}"

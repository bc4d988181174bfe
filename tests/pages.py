"""README.md and docs/*.md as the tests read them: the pages, and their fenced code blocks (what
tests/test_docs.py runs, tests/test_readme.py and tests/test_extension.py execute)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
FENCE = re.compile(r"^\s*(```+|~~~+)\s*([\w+-]*)")


def pages() -> list[Path]:
    return [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]


@dataclass
class Block:
    language: str
    line: int  # of its first line of content
    lines: list[str]

    @property
    def text(self) -> str:
        return "".join(f"{line}\n" for line in self.lines)


def blocks(text: str) -> list[Block]:
    found, fence, block = [], "", None
    for number, line in enumerate(text.splitlines(), 1):
        opening = FENCE.match(line)
        if block is None and opening:
            fence, block = opening[1], Block(opening[2], number + 1, [])
        elif block is not None and line.strip().startswith(fence) and not line.strip().strip(fence[0]):
            found.append(block)
            block = None
        elif block is not None:
            block.lines.append(line)
    return found


def code(page: Path, language: str) -> list[str]:
    """The text of each of ``page``'s blocks in ``language`` (``python``, ``yaml``, ``text``, ...)."""
    return [block.text for block in blocks(page.read_text()) if block.language == language]

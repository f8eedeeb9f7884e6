"""Read documentation for tests: fenced blocks and tables of a Markdown file, commands of a shell block,
and the YAML examples written as comments in a config file.

Deliberately small parsers for the shapes this project's docs use; each raises on what it does not
understand, so a new shape fails a test instead of being skipped.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass
from pathlib import Path

_FENCE = re.compile(r"^(```+)\s*([\w-]*)\s*$")
_HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*$")


@dataclass(frozen=True)
class Block:
    """A fenced code block: its language, its text, where it is (line, headings above it)."""

    language: str
    text: str
    line: int
    headings: tuple[str, ...]
    index: int  # among the blocks under the same headings

    @property
    def id(self) -> str:
        return f"{' / '.join(self.headings)} #{self.index}"


@dataclass(frozen=True)
class Table:
    """A Markdown table: header cells and rows of cells, and the headings above it."""

    header: tuple[str, ...]
    rows: tuple[tuple[str, ...], ...]
    line: int
    headings: tuple[str, ...]


def blocks(path: Path) -> list[Block]:
    """Every fenced block of a Markdown file, in order."""
    found: list[Block] = []
    headings: list[tuple[int, str]] = []
    counts: dict[tuple[str, ...], int] = {}
    lines = path.read_text(encoding="utf-8").splitlines()
    i = 0
    while i < len(lines):
        fence = _FENCE.match(lines[i])
        if fence is None:
            heading = _HEADING.match(lines[i])
            if heading:
                level = len(heading.group(1))
                headings = [(lvl, title) for lvl, title in headings if lvl < level] + [(level, heading.group(2))]
            i += 1
            continue
        start = i
        i += 1
        body: list[str] = []
        while i < len(lines) and lines[i].strip() != fence.group(1):
            body.append(lines[i])
            i += 1
        if i == len(lines):
            raise ValueError(f"{path}:{start + 1}: unterminated code block")
        i += 1
        titles = tuple(title for _, title in headings)
        counts[titles] = counts.get(titles, -1) + 1
        found.append(Block(fence.group(2), "\n".join(body) + "\n", start + 1, titles, counts[titles]))
    return found


def tables(path: Path) -> list[Table]:
    """Every table of a Markdown file (outside code blocks): consecutive lines that start with ``|``."""
    found: list[Table] = []
    headings: list[tuple[int, str]] = []
    lines = path.read_text(encoding="utf-8").splitlines()
    in_code = False
    i = 0
    while i < len(lines):
        line = lines[i]
        if _FENCE.match(line):
            in_code = not in_code
        elif not in_code and (heading := _HEADING.match(line)):
            level = len(heading.group(1))
            headings = [(lvl, title) for lvl, title in headings if lvl < level] + [(level, heading.group(2))]
        elif not in_code and line.startswith("|"):
            start = i
            rows = []
            while i < len(lines) and lines[i].startswith("|"):
                rows.append(split_row(lines[i]))
                i += 1
            found.append(Table(rows[0], tuple(rows[2:]), start + 1, tuple(title for _, title in headings)))
            continue
        i += 1
    return found


def split_row(line: str) -> tuple[str, ...]:
    """The cells of a table row; a ``|`` inside backticks (a regex, a PromQL or) is not a separator."""
    cells, cell, in_code = [], "", False
    for char in line.strip().removeprefix("|").removesuffix("|"):
        if char == "`":
            in_code = not in_code
        if char == "|" and not in_code:
            cells.append(cell.strip())
            cell = ""
        else:
            cell += char
    cells.append(cell.strip())
    return tuple(cells)


def code_spans(text: str) -> list[str]:
    """The contents of the inline code spans (backticks) in ``text``."""
    return re.findall(r"`([^`]+)`", text)


def commands(script: str) -> list[str]:
    """The commands of a shell block, each with its continuation lines and here-document.

    Lines that are only comments are left out (they are documentation, not commands).
    """
    lines = script.splitlines()
    found: list[str] = []
    i = 0
    while i < len(lines):
        line = lines[i]
        i += 1
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        command = [line]
        while command[-1].rstrip().endswith("\\") and i < len(lines):
            command.append(lines[i])
            i += 1
        heredoc = re.search(r"<<-?\s*(['\"]?)(\w+)\1", "\n".join(command))
        if heredoc:
            end = heredoc.group(2)
            while True:
                if i == len(lines):
                    raise ValueError(f"here-document {end} is not terminated in:\n{script}")
                command.append(lines[i])
                i += 1
                if lines[i - 1].strip() == end:
                    break
        found.append("\n".join(command))
    return found


def argv(command: str) -> list[str]:
    """The words of a command's first line (continuations joined; here-document and comments left out)."""
    first = command.split("\n")
    text = ""
    for line in first:
        text += line.rstrip().removesuffix("\\") + " "
        if not line.rstrip().endswith("\\"):
            break
    return shlex.split(text, comments=True)


def comment_examples(text: str) -> list[tuple[int, int]]:
    """YAML examples written as comments: runs of lines ``<indent>#   ...`` (a hash and three or more spaces).

    Returns (first line, end line) index pairs, end exclusive.
    """
    lines = text.splitlines()
    runs: list[tuple[int, int]] = []
    i = 0
    while i < len(lines):
        if re.match(r"^\s*#   ", lines[i]):
            start = i
            while i < len(lines) and re.match(r"^\s*#   ", lines[i]):
                i += 1
            runs.append((start, i))
        else:
            i += 1
    return runs


def uncomment_example(text: str, run: tuple[int, int]) -> str:
    """``text`` with the commented example at ``run`` made real, in place of the key it illustrates.

    ``  #   title: "..."`` becomes ``  title: "..."`` (the example nests where its comment is), and the
    next real line, when it sets the same key (``  title: null``), is removed.
    """
    lines = text.splitlines()
    start, end = run
    indent = len(lines[start]) - len(lines[start].lstrip())
    example = [line[:indent] + line[indent + 4 :] for line in lines[start:end]]
    key = example[0].strip().split(":", 1)[0]
    rest = lines[end:]
    following = next((n for n, line in enumerate(rest) if line.strip() and not line.lstrip().startswith("#")), None)
    if following is not None and re.match(rf"^{re.escape(' ' * indent + key)}:", rest[following]):
        del rest[following]
    return "\n".join([*lines[:start], *example, *rest]) + "\n"

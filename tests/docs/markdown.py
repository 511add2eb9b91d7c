"""Small, dependency-free readers for the project's Markdown: fenced blocks, links, heading
anchors, and a structural check of Mermaid diagrams (no Mermaid parser is installable here).

The Mermaid check catches what breaks rendering in practice: an unknown diagram type, an
unbalanced bracket or quote on a line, an unclosed `subgraph`/`loop`/`alt` block, and, in a
sequence diagram that declares its participants, an arrow to a participant never declared (a
typo renders as a new, stray lifeline).
"""

from __future__ import annotations

import os
import re
import unicodedata
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Final

DIAGRAM_TYPES: Final = frozenset(
    {
        "flowchart",
        "graph",
        "sequenceDiagram",
        "stateDiagram",
        "stateDiagram-v2",
        "classDiagram",
        "erDiagram",
        "C4Context",
        "C4Container",
        "C4Component",
        "C4Dynamic",
        "C4Deployment",
        "gantt",
        "pie",
        "journey",
        "gitGraph",
        "mindmap",
        "timeline",
        "quadrantChart",
        "requirementDiagram",
        "sankey-beta",
        "xychart-beta",
        "block-beta",
    }
)
FLOWCHART_DIRECTIONS: Final = frozenset({"TB", "TD", "BT", "RL", "LR"})
#: Sequence-diagram blocks closed by `end`, and the keywords allowed inside each.
SEQUENCE_BLOCKS: Final = {
    "loop": frozenset(),
    "alt": frozenset({"else"}),
    "opt": frozenset(),
    "par": frozenset({"and"}),
    "critical": frozenset({"option"}),
    "break": frozenset(),
    "rect": frozenset(),
    "box": frozenset(),
}
_PAIRS: Final = {")": "(", "]": "["}
_FENCE = re.compile(r"^\s*(```+|~~~+)\s*([\w+-]*)")
_ARROW = r"-->>|->>|-->|->|--x|-x|--\)|-\)"
_MESSAGE = re.compile(
    rf"^(?P<a>[^\s:+\-][^:]*?)\s*(?P<arrow>{_ARROW})\s*[+-]?\s*(?P<b>[^:]+?)\s*:(?P<text>.*)$"
)
_NOTE = re.compile(r"^[Nn]ote\s+(?:over|left of|right of)\s+(?P<who>[^:]+):")
_PARTICIPANT = re.compile(r"^(?:create\s+)?(?:participant|actor)\s+(?P<id>[^\s]+)")
_ACTIVATION = re.compile(r"^(?:activate|deactivate|destroy)\s+(?P<id>\S+)\s*$")
_LINK = re.compile(r"!?\[(?:[^\]\\]|\\.)*\]\(\s*<?(?P<target>[^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
_REFERENCE = re.compile(r"^\s*\[[^\]]+\]:\s*<?(?P<target>\S+?)>?(?:\s+.*)?$")
_HEADING = re.compile(r"^(#{1,6})\s+(?P<text>.*?)\s*#*\s*$")
_CODE_SPAN = re.compile(r"(`+)(?:(?!\1).)+\1")
_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:")


@dataclass(frozen=True)
class Block:
    """A fenced code block: its info string, the line it starts on, its content lines."""

    lang: str
    line: int
    lines: list[str]
    closed: bool = True


def split_markdown(text: str) -> tuple[list[Block], list[tuple[int, str]]]:
    """The fenced blocks, and the other lines (numbered from 1) outside any fence."""
    blocks: list[Block] = []
    prose: list[tuple[int, str]] = []
    fence: str | None = None
    current: Block | None = None
    for number, line in enumerate(text.splitlines(), start=1):
        match = _FENCE.match(line)
        if fence is None:
            if match:
                fence = match.group(1)
                current = Block(match.group(2), number, [])
                continue
            prose.append((number, line))
        elif match and match.group(1).startswith(fence) and not match.group(2):
            assert current is not None
            blocks.append(current)
            fence, current = None, None
        else:
            assert current is not None
            current.lines.append(line)
    if current is not None:  # an unclosed fence: report it as a block that never ended
        blocks.append(Block(current.lang, current.line, current.lines, closed=False))
    return blocks, prose


def _strip_quoted(line: str) -> str:
    return re.sub(r'"[^"]*"', '""', line)


def _bracket_problem(line: str) -> str | None:
    if line.count('"') % 2:
        return "unbalanced double quote"
    stack: list[str] = []
    for char in _strip_quoted(line):
        if char in "([":
            stack.append(char)
        elif char in ")]" and (not stack or stack.pop() != _PAIRS[char]):
            return f"unbalanced {char!r}"
    return f"unclosed {stack[-1]!r}" if stack else None


def _statements(lines: list[str]) -> Iterator[tuple[int, str]]:
    """Non-empty, non-comment lines, after any `---` front matter, numbered from 1."""
    in_front_matter = False
    for number, raw in enumerate(lines, start=1):
        line = raw.strip()
        if number == 1 and line == "---":
            in_front_matter = True
            continue
        if in_front_matter:
            in_front_matter = line != "---"
            continue
        if line and not line.startswith("%%"):
            yield number, line


def mermaid_problems(lines: list[str]) -> list[str]:
    """Structural problems of one Mermaid diagram; an empty list when it looks well formed."""
    statements = list(_statements(lines))
    if not statements:
        return ["empty diagram"]
    problems: list[str] = []
    first = statements[0][1].split()
    kind = first[0]
    if kind not in DIAGRAM_TYPES:
        return [f"line {statements[0][0]}: unknown diagram type {kind!r}"]
    if kind in ("flowchart", "graph") and len(first) > 1 and first[1] not in FLOWCHART_DIRECTIONS:
        problems.append(f"line {statements[0][0]}: unknown direction {first[1]!r}")
    braces = 0
    blocks: list[str] = []
    declared: set[str] = set()
    used: list[tuple[int, str]] = []
    for number, line in statements[1:]:
        # The async arrows of sequence diagrams (`A-)B`, `A--)B`) hold a parenthesis.
        bare = re.sub(r"--?\)", "", line) if kind == "sequenceDiagram" else line
        problem = _bracket_problem(bare)
        if problem:
            problems.append(f"line {number}: {problem}: {line}")
        unquoted = _strip_quoted(line)
        braces += unquoted.count("{") - unquoted.count("}")
        if braces < 0:
            problems.append(f"line {number}: '}}' closes nothing")
            braces = 0
        word = line.split()[0]
        if word == "end":
            if not blocks:
                problems.append(f"line {number}: 'end' closes nothing")
            else:
                blocks.pop()
            continue
        if kind in ("flowchart", "graph") and word == "subgraph":
            blocks.append(word)
        if kind != "sequenceDiagram":
            continue
        if word in SEQUENCE_BLOCKS:
            blocks.append(word)
            continue
        if word in ("else", "and", "option"):
            if not blocks or word not in SEQUENCE_BLOCKS[blocks[-1]]:
                problems.append(f"line {number}: {word!r} outside its block")
            continue
        # Mermaid's sequence lexer ends a message's text at ';' or '#'.
        if ";" in line or "#" in line:
            problems.append(f"line {number}: ';' or '#' ends a Mermaid statement early: {line}")
        if participant := _PARTICIPANT.match(line):
            declared.add(participant.group("id"))
        elif message := _MESSAGE.match(line):
            used += [(number, message.group("a").strip()), (number, message.group("b").strip())]
        elif note := _NOTE.match(line):
            used += [(number, who.strip()) for who in note.group("who").split(",")]
        elif activation := _ACTIVATION.match(line):
            used.append((number, activation.group("id")))
        elif word not in ("autonumber", "title", "accTitle", "accDescr", "links", "link"):
            problems.append(f"line {number}: not a sequence statement: {line}")
    if braces:
        problems.append(f"{braces} unclosed '{{'")
    if blocks:
        problems.append(f"unclosed block(s): {', '.join(blocks)}")
    if declared:
        problems += [
            f"line {number}: participant {who!r} is not declared"
            for number, who in used
            if who not in declared
        ]
    return problems


def github_slug(heading: str) -> str:
    """The anchor GitHub gives a heading: rendered text, lower case, punctuation dropped,
    spaces turned into hyphens (several in a row stay several)."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading).replace("`", "")
    kept = (
        char
        for char in text.lower()
        if char in " -_" or unicodedata.category(char)[0] in ("L", "N")
    )
    return "".join(kept).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    """Every heading anchor of a Markdown file, with GitHub's -1, -2 suffixes for repeats."""
    _blocks, prose = split_markdown(path.read_text(encoding="utf-8"))
    seen: dict[str, int] = {}
    result: set[str] = set()
    for _number, line in prose:
        match = _HEADING.match(line)
        if not match:
            continue
        slug = github_slug(match.group("text"))
        count = seen.get(slug, 0)
        seen[slug] = count + 1
        result.add(slug if count == 0 else f"{slug}-{count}")
    return result


def links(path: Path) -> list[tuple[int, str]]:
    """(line, target) of every inline link, image and reference definition outside code."""
    _blocks, prose = split_markdown(path.read_text(encoding="utf-8"))
    found: list[tuple[int, str]] = []
    for number, line in prose:
        text = _CODE_SPAN.sub("", line)
        found += [(number, m.group("target")) for m in _LINK.finditer(text)]
        if reference := _REFERENCE.match(text):
            found.append((number, reference.group("target")))
    return found


def link_problem(source: Path, target: str, repo_root: Path) -> str | None:
    """Why a relative link does not resolve, or None (external links are not followed)."""
    if _SCHEME.match(target):
        return None
    path_part, _hash, anchor = target.partition("#")
    resolved = (source.parent / path_part).resolve() if path_part else source.resolve()
    if not resolved.exists():
        return f"{target}: no such file {os.path.relpath(resolved, repo_root)}"
    if (
        anchor
        and resolved.is_file()
        and resolved.suffix == ".md"
        and anchor not in anchors(resolved)
    ):
        return f"{target}: no heading with anchor #{anchor} in {resolved.name}"
    return None

"""Where in a policy or schema file a Cedar error is: cedarpy reports no line or column.

`locate` finds the line and column of an error message; `statement_spans`
and `statement_lines` split a file into its top-level statements, skipping
comments and strings.
"""

from __future__ import annotations

import re
from typing import Any


def locate(text: str, message: str, parse: Any) -> tuple[int | None, int | None]:
    """Find the line and column a Cedar error points at, since cedarpy reports none.

    Syntax errors: first the statement that fails on its own, then, inside it,
    the occurrence of the offending token that Cedar stopped at (see
    `_locate_in`); an unterminated string is found by its quotes. Other errors: the first place
    the name the message quotes stands. With nothing found it says nothing
    rather than guess.
    """
    if _is_syntax(message):
        start, end = _failing_statement(text, parse)
        found = _locate_in(text[start:end], message, parse)
        offset = found if found is not None else _first_char(text[start:end])
        return _position(text, start + offset)
    if message == "unexpected end of input":
        lines = text.rstrip().split("\n")
        return len(lines), len(lines[-1]) + 1
    for quoted, bare in reversed(re.findall(r"`([^`]+)`|: (\w+)$", message)):
        name = quoted or bare
        match = re.search(rf"(?<![\w\"]){re.escape(name)}(?![\w\"])", text) if name else None
        if match is not None:
            return _position(text, match.start())
    return None, None


def _is_syntax(message: str) -> bool:
    return "unexpected token" in message or "invalid token" in message


def _failing_statement(text: str, parse: Any) -> tuple[int, int]:
    """The span of the first top-level statement that has a syntax error of its own."""
    for start, end in statement_spans(text):
        try:
            parse(text[start:end])
        except ValueError as err:
            if _is_syntax(str(err)):
                return start, end
    return 0, len(text)


def _locate_in(segment: str, message: str, parse: Any) -> int | None:
    """Offset of the error inside one statement."""
    try:
        parse(segment)
        own = message
    except ValueError as err:
        own = str(err)
    if "invalid token" in own:
        return _unterminated_string(segment)
    token = re.search(r"unexpected token `([^`]+)`", own)
    if token is None:
        return None
    word = token.group(1)
    pattern = rf"(?<!\w){re.escape(word)}(?!\w)" if word[0].isalnum() else re.escape(word)
    # Cedar reports the first error. Removing a token before the culprit moves
    # that error earlier; removing the culprit moves or clears it; removing one
    # after it leaves it where it is. So the culprit is the last occurrence
    # whose removal changes the message.
    culprit = None
    for match in re.finditer(pattern, _blank_comments(segment)):
        start, end = match.span()
        try:
            parse(segment[:start] + " " * (end - start) + segment[end:])
            culprit = start
        except ValueError as err:
            if str(err) != own:
                culprit = start
    return culprit


def _unterminated_string(segment: str) -> int | None:
    offset = 0
    for line in segment.split("\n"):
        code = line.split("//", 1)[0]
        if len(re.findall(r'(?<!\\)"', code)) % 2:
            return offset + code.index('"')
        offset += len(line) + 1
    return None


def _first_char(segment: str) -> int:
    stripped = _blank_comments(segment)
    return len(stripped) - len(stripped.lstrip())


def _blank_comments(text: str) -> str:
    return re.sub(r"//[^\n]*", lambda m: " " * len(m.group(0)), text)


def _position(text: str, offset: int) -> tuple[int, int]:
    line = text.count("\n", 0, offset) + 1
    return line, offset - (text.rfind("\n", 0, offset) + 1) + 1


def statement_spans(text: str) -> list[tuple[int, int]]:
    """(start, end) offsets of each top-level `;`-terminated statement, comments skipped.

    A trailing fragment with no `;` is a statement too (it is where EOF errors are).
    """
    spans: list[tuple[int, int]] = []
    i, start, depth = 0, None, 0
    while i < len(text):
        c = text[i]
        if text.startswith("//", i):
            end = text.find("\n", i)
            i = len(text) if end < 0 else end
            continue
        if c == '"':
            if start is None:
                start = i
            i += 1
            while i < len(text) and text[i] not in '"\n':
                i += 2 if text[i] == "\\" else 1
        elif c in "{[(":
            depth += 1
        elif c in "}])":
            depth = max(0, depth - 1)
        if c == ";" and depth == 0 and start is not None:
            spans.append((start, i + 1))
            start = None
        elif not c.isspace() and start is None:
            start = i
        i += 1
    if start is not None:
        spans.append((start, len(text)))
    return spans


def statement_lines(text: str) -> list[int]:
    """The line on which each top-level statement starts."""
    return [text.count("\n", 0, start) + 1 for start, _ in statement_spans(text)]

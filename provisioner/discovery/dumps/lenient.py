"""Read JSON and XML that may be cut short: keep what was complete, say it was partial."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET

CLOSERS = {"{": "}", "[": "]"}


def loads_lenient(text: str) -> tuple[object, bool, list[str]]:
    """(data, partial, problems). Truncated JSON is closed at its last complete value."""
    text = text.strip()
    start = min((i for i in (text.find("{"), text.find("[")) if i >= 0), default=-1)
    if start < 0:
        return None, True, ["no JSON value found"]
    text = text[start:]
    try:
        data, end = json.JSONDecoder().raw_decode(text)
    except (ValueError, RecursionError) as exc:
        repaired = _repair(text)
        if repaired is None:
            return None, True, [f"unreadable JSON: {exc}"]
        return repaired, True, [f"JSON cut short ({exc}); read what was complete"]
    problems = [] if not text[end:].strip() else ["text after the JSON value ignored"]
    return data, False, problems


def _repair(text: str, attempts: int = 400) -> object | None:
    """Cut at a ',' or closer near the end and close what is open; try a few cut points."""
    stack: list[str] = []
    cuts: list[tuple[int, str]] = []
    in_string = escaped = False
    for i, ch in enumerate(text):
        if in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
            continue
        if ch == '"':
            in_string = True
        elif ch in CLOSERS:
            stack.append(CLOSERS[ch])
        elif ch in "}]" and stack:
            stack.pop()
            cuts.append((i + 1, "".join(reversed(stack))))
        elif ch == ",":
            cuts.append((i, "".join(reversed(stack))))
    for cut, closing in reversed(cuts[-attempts:]):
        try:
            data: object = json.loads(text[:cut] + closing)
            return data
        except (ValueError, RecursionError):
            continue
    return None


def _first_start(
    parser: ET.XMLPullParser[ET.Element], root: ET.Element | None
) -> ET.Element | None:
    for event in parser.read_events():
        elem = event[-1] if isinstance(event, tuple) else None
        if root is None and isinstance(elem, ET.Element):
            root = elem
    return root


def parse_xml(text: str) -> tuple[ET.Element | None, bool, list[str]]:
    """(root, partial, problems). A truncated document keeps the elements already opened."""
    start = text.find("<")
    if start < 0:
        return None, True, ["no XML found"]
    parser: ET.XMLPullParser[ET.Element] = ET.XMLPullParser(events=("start",))
    root: ET.Element | None = None
    try:
        # A DOCTYPE names an external DTD; expat does not fetch it.
        parser.feed(text[start:])
        root = _first_start(parser, root)
        parser.close()
    except ET.ParseError as exc:
        root = _first_start(parser, root)
        return root, True, [f"XML cut short or malformed: {exc}"]
    root = _first_start(parser, root)
    return root, False, []

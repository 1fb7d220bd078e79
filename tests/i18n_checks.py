"""Checks the translated-page tests share: which English catalogue messages a page still shows."""

from __future__ import annotations

import re
from pathlib import Path

from babel.messages.pofile import read_po

TRANSLATIONS = Path(__file__).resolve().parent.parent / "portal" / "translations"
PLACEHOLDER = re.compile(r"%\(\w+\)[sd]|\{\w+\}")


def english_left(page: str, language: str, own_files: re.Pattern[str]) -> list[str]:
    """The English messages of ``own_files`` still on ``page``: those the catalogue of ``language`` words
    differently, long enough not to be part of another text (with a placeholder: the longest fixed part)."""
    with (TRANSLATIONS / language / "LC_MESSAGES" / "messages.po").open("rb") as handle:
        catalogue = read_po(handle, locale=language)
    left = []
    for message in catalogue:
        if not message.id or not any(own_files.match(path) for path, _line in message.locations):
            continue
        ids = message.id if isinstance(message.id, tuple) else (message.id,)
        forms = message.string if isinstance(message.string, tuple) else (message.string,)
        for msgid in ids:
            if msgid in forms:
                continue
            fixed = max(PLACEHOLDER.split(msgid), key=len).strip()
            if len(fixed) >= 12 and fixed in page:
                left.append(msgid)
    return left

"""The documentation stays true: the settings reference is the settings' own, and every link leads somewhere."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from portal.config import Settings
from portal.settings_doc import SETTINGS_DOC_COMMAND, settings_reference

REPO = Path(__file__).resolve().parents[2]
DOCS = sorted([REPO / "README.md", *(REPO / "docs").glob("*.md")])
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


def outside_code(text: str) -> str:
    """The text without fenced code blocks and inline code, where brackets are not links."""
    text = re.sub(r"^```.*?^```", "", text, flags=re.MULTILINE | re.DOTALL)
    return re.sub(r"`[^`\n]*`", "", text)


def anchors(path: Path) -> set[str]:
    """The anchors GitHub gives the headings of a Markdown file (inline code's text is part of them)."""
    seen: dict[str, int] = {}
    found = set()
    for line in re.sub(r"^```.*?^```", "", path.read_text(), flags=re.MULTILINE | re.DOTALL).splitlines():
        match = re.match(r"^#{1,6} (.+)$", line)
        if not match:
            continue
        slug = re.sub(r"[^\w\- ]", "", match[1].strip().lower()).replace(" ", "-")
        found.add(slug if slug not in seen else f"{slug}-{seen[slug]}")
        seen[slug] = seen.get(slug, 0) + 1
    return found


def test_the_settings_reference_is_generated_from_the_settings() -> None:
    written = (REPO / "docs" / "settings.md").read_text()
    assert written == settings_reference(), f"docs/settings.md is out of date: run {SETTINGS_DOC_COMMAND}"
    for name in Settings.model_fields:
        assert f"`PORTAL_{name.upper()}`" in written
        assert Settings.model_fields[name].description, f"setting {name} has no description="


def test_the_settings_reference_never_shows_a_secrets_value() -> None:
    reference = settings_reference()
    for value in ("sk_test_devstripe", "whsec_devstripe", "dev-hub-oauth-secret", "dev-hub-spawn-check-token",
                  "dev-hub-api-token"):  # fmt: skip
        assert value not in reference


@pytest.mark.parametrize("document", DOCS, ids=lambda path: str(path.relative_to(REPO)))
def test_every_relative_link_leads_to_an_existing_file_and_heading(document: Path) -> None:
    for target in LINK.findall(outside_code(document.read_text())):
        if re.match(r"^[a-z]+:", target):  # https:, mailto: ...
            continue
        path_part, _, anchor = target.partition("#")
        linked = (document.parent / path_part).resolve() if path_part else document
        assert linked.exists(), f"{document.relative_to(REPO)} links to {target}, which does not exist"
        if anchor and linked.suffix == ".md":
            assert anchor in anchors(linked), f"{document.relative_to(REPO)} links to {target}: no such heading"


def test_the_readme_stays_short_and_its_layout_names_what_exists() -> None:
    readme = (REPO / "README.md").read_text()
    assert len(readme.splitlines()) <= 150
    layout = readme.split("## Layout", 1)[1].split("```")[1]
    parent = ""
    for line in layout.splitlines():
        match = re.match(r"^( *)(\S+)\s", line + " ")
        if not match or not line.strip() or line.startswith(" " * 8):
            continue
        indent, name = match.groups()
        path = f"{parent}{name}" if indent else name
        if not indent:
            parent = name if name.endswith("/") else ""
        assert (REPO / path).exists(), f"README's layout names {path}, which does not exist"

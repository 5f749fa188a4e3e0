"""`debcache diff` as HTML: the same `Diff` the command prints, in headings and tables."""

from __future__ import annotations

from ..diff import Diff, SuiteDiff
from .rendering import Markup, heading, join, paragraph, table


def diff_html(result: Diff) -> Markup:
    """What `Diff.as_text` says, section for section."""
    parts: list[object] = [paragraph(f"From {result.a.description} to {result.b.description}.")]
    for suite in result.suites:
        if not suite.empty:
            parts.append(_suite_html(suite))
    if result.other_files:
        parts += [
            heading(3, "Other files"),
            table(("change", "file", "sha256"), result.other_rows()),
        ]
    if not result.differs:
        parts.append(paragraph("No file differs."))
    return join(parts)


def _suite_html(suite: SuiteDiff) -> Markup:
    parts: list[object] = [heading(3, f"{suite.upstream} {suite.suite}")]
    old, new = suite.release_dates
    if old != new:
        parts.append(paragraph(f"Release date: {old or '(none)'} → {new or '(none)'}"))
    for title, changes in (("Packages", suite.packages), ("udebs", suite.udebs)):
        if changes:
            headers = ("change", "package", "architecture", "version")
            parts += [heading(4, title), table(headers, changes.text_rows())]
    for installer in suite.installers:
        headers = ("change", "image", "sha256")
        parts += [heading(4, installer.heading()), table(headers, suite.image_rows(installer))]
    if suite.index_files:
        summary = suite.index_summary()
        parts.append(paragraph(f"Index files: {summary} (they follow from the changes above)."))
    return join(parts)

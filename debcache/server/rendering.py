"""HTML for the status page and the branch pages: server-rendered, no JavaScript, readable
without CSS, and every text escaped in one place.

A value reaches a page only through `render` or `table`, which escape it unless it is
`Markup` (HTML built here from escaped parts). Names, labels, notes and failure reasons
are free text as far as a page is concerned: `<b>` in a label must show as `<b>`.
"""

from __future__ import annotations

import html
from collections.abc import Iterable
from datetime import UTC, datetime
from importlib import resources
from string import Template


class Markup(str):
    """HTML that is safe as it is: made by this module from escaped text."""


def escape(value: object) -> Markup:
    if isinstance(value, Markup):
        return value
    return Markup(html.escape(str(value)))


def template(name: str) -> Template:
    """A page of templates/, its `$style` the one stylesheet every page shares."""
    folder = resources.files("debcache.server").joinpath("templates")
    text = folder.joinpath(name).read_text()
    return Template(text.replace("$style", folder.joinpath("style.css").read_text()))


def render(page: Template, **values: object) -> str:
    """The page with every value escaped (Markup as it is)."""
    return page.substitute({name: escape(value) for name, value in values.items()})


def link(href: str, text: object) -> Markup:
    return Markup(f'<a href="{html.escape(href)}">{escape(text)}</a>')


def table(headers: Iterable[str], rows: Iterable[Iterable[object]], empty: str = "") -> Markup:
    """A table with a header row; `empty` (a paragraph) instead when there is no row."""
    body = ["<tr>" + "".join(f"<td>{escape(cell)}</td>" for cell in row) + "</tr>" for row in rows]
    if not body and empty:
        return Markup(f"<p>{escape(empty)}</p>")
    head = "<tr>" + "".join(f"<th>{escape(h)}</th>" for h in headers) + "</tr>"
    return Markup("<table>\n" + "\n".join([head, *body]) + "\n</table>")


def paragraph(text: object) -> Markup:
    return Markup(f"<p>{escape(text)}</p>")


def heading(level: int, text: object) -> Markup:
    return Markup(f"<h{level}>{escape(text)}</h{level}>")


def join(parts: Iterable[object]) -> Markup:
    return Markup("\n".join(escape(part) for part in parts))


def when(timestamp: float | None) -> str:
    if not timestamp:
        return "-"
    return datetime.fromtimestamp(timestamp, UTC).strftime("%Y-%m-%d %H:%M UTC")


def size(count: int) -> str:
    return f"{count / 1e6:.1f} MB"

"""User story: an operator reads /_/ in a browser and a release manager a branch's page.

The pages are loaded in headless Chromium (Debian's `chromium`) and read from the DOM
it built, as a person would see them: the branch table with each branch's manifest,
label, last change and its note, size and what the last `debcache verify` found; each
upstream's health; and a branch's history with what its last promote changed — the
same rows `debcache diff` gives. Labels and notes are free text, so they carry HTML
metacharacters here (names may not): they must show as text, never become markup.
On a failure, a screenshot of the page goes to $DEBCACHE_TEST_ARTIFACTS (or the
test's tmp_path); see tests/README.md.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path

import pytest
from archive_fixture import Archive
from debcache_server import DebcacheServer, make_config, write_config_file
from fake_mirror import FakeMirror, Fault
from http_client import get
from processes import free_port
from workflow import freeze_json, run

CHROMIUM_DEADLINE = 120  # seconds: a cold start on a loaded machine is slow
LABEL = "<b>second</b> & co"
NOTE = '<script>alert(1)</script> & "x"'

# --- the browser and the DOM it built -------------------------------------------------


class Browser:
    """Headless Chromium with a profile of its own; dumps a page's DOM or a screenshot."""

    def __init__(self, profile: Path) -> None:
        self.chromium = shutil.which("chromium")
        assert self.chromium, "chromium is missing: bash .ci/install-deps installs it"
        self.profile = profile

    def _run(self, *args: str) -> subprocess.CompletedProcess:
        command = [
            self.chromium,
            "--headless=new",
            "--no-sandbox",  # tests may run as root, where the sandbox refuses to start
            "--disable-gpu",
            "--no-proxy-server",  # the page is on loopback, whatever the environment says
            f"--user-data-dir={self.profile}",
            *args,
        ]
        return subprocess.run(command, capture_output=True, text=True, timeout=CHROMIUM_DEADLINE)

    def dom(self, url: str) -> Element:
        result = self._run("--dump-dom", url)
        assert result.returncode == 0, result.stderr[-2000:]
        return parse_html(result.stdout)

    def screenshot(self, url: str, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._run(f"--screenshot={path}", "--window-size=1280,2000", url)


VOID_ELEMENTS = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "wbr"}


@dataclass
class Element:
    tag: str
    attrs: dict[str, str] = field(default_factory=dict)
    children: list[Element | str] = field(default_factory=list)

    def text(self) -> str:
        return "".join(c if isinstance(c, str) else c.text() for c in self.children)

    def iter(self, tag: str) -> Iterator[Element]:
        for child in self.children:
            if isinstance(child, Element):
                if child.tag == tag:
                    yield child
                yield from child.iter(tag)


class _TreeBuilder(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.root = Element("#document")
        self.open = [self.root]

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        element = Element(tag, {name: value or "" for name, value in attrs})
        self.open[-1].children.append(element)
        if tag not in VOID_ELEMENTS:
            self.open.append(element)

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.open[-1].children.append(Element(tag, {name: value or "" for name, value in attrs}))

    def handle_endtag(self, tag: str) -> None:
        if any(element.tag == tag for element in self.open[1:]):
            while self.open.pop().tag != tag:
                pass

    def handle_data(self, data: str) -> None:
        self.open[-1].children.append(data)


def parse_html(text: str) -> Element:
    builder = _TreeBuilder()
    builder.feed(text)
    builder.close()
    return builder.root


def table_after(dom: Element, first_header: str) -> list[dict[str, Element]]:
    """The rows of the table whose first column is `first_header`: header → cell."""
    for table in dom.iter("table"):
        rows = list(table.iter("tr"))
        headers = [th.text() for th in rows[0].iter("th")] if rows else []
        if headers and headers[0] == first_header:
            return [dict(zip(headers, row.iter("td"), strict=True)) for row in rows[1:]]
    raise AssertionError(f"no table with a {first_header!r} column")


def no_markup_from_text(dom: Element) -> None:
    """The label's <b> and the note's <script> stayed text: no such element exists."""
    assert not list(dom.iter("script")), "a <script> element was created"
    assert not list(dom.iter("b")), "a <b> element was created"


# --- the state the pages show ---------------------------------------------------------


@pytest.fixture
def browser(tmp_path: Path) -> Browser:
    return Browser(tmp_path / "chromium-profile")


@pytest.fixture
def artefacts(tmp_path: Path, request: pytest.FixtureRequest) -> Path:
    """Where a failing test leaves its screenshots."""
    base = os.environ.get("DEBCACHE_TEST_ARTIFACTS")
    return (Path(base) if base else tmp_path / "artefacts") / request.node.name


@contextmanager
def screenshot_on_failure(browser: Browser, url: str, path: Path) -> Iterator[None]:
    """A failed check inside leaves a screenshot of `url` at `path` (named in the error)."""
    try:
        yield
    except AssertionError as failure:
        browser.screenshot(url, path)
        failure.add_note(f"screenshot of {url}: {path}")
        raise


@pytest.fixture
def lab(tmp_path: Path, mirror: FakeMirror, archive: Archive) -> Iterator[DebcacheServer]:
    """debcache with upstream `debian` (the fixture mirror) and `down` (nothing listens)."""
    upstreams = {
        "debian": [f"{mirror.url}/debian"],
        "down": [f"http://127.0.0.1:{free_port()}/debian"],
    }
    config = make_config(
        tmp_path / "data", upstreams, keyring=archive.key.keyring, coalesce_window=0, timeout=5
    )
    server = DebcacheServer(config)
    server.config_file = write_config_file(config, tmp_path / "debcache.toml")
    server.start()
    yield server
    server.stop()


def record(server: DebcacheServer, recording: str, paths: list[str]) -> None:
    rows_before = len(server.fetches(recording))
    for path in paths:
        assert get(server.url, f"/record/{recording}/debian/{path}").status == 200, path
    server.wait_for_fetches(rows_before + len(paths), recording=recording)


def promote(server: DebcacheServer, branch: str, manifest: str, *note: str) -> None:
    result = run(server, "promote", branch, manifest, *note)
    assert result.exit_code == 0, result.output


def two_promotes_and_a_verify(server: DebcacheServer, archive: Archive) -> tuple[str, str]:
    """Branch `lab`: promoted to a manifest of the InRelease, then to one with hello too
    (label and note with metacharacters), then verified; branch `fresh` promoted after
    the verify. The two manifest ids."""
    record(server, "run-1", ["dists/bookworm/InRelease"])
    first = freeze_json(server, "run-1", "--name", "first")["id"]
    packages = "dists/bookworm/main/binary-amd64/Packages.xz"
    record(server, "run-2", ["dists/bookworm/InRelease", packages, archive.pool_path("hello")])
    second = freeze_json(server, "run-2", "--name", LABEL)["id"]
    promote(server, "lab", first, "--note", "the first")
    promote(server, "lab", second, "--note", NOTE)
    verified = run(server, "verify")
    assert verified.exit_code == 0, verified.output
    promote(server, "fresh", first)
    return first, second


# --- the tests ------------------------------------------------------------------------


def test_the_status_page_shows_branches_and_upstream_health_as_text(
    lab: DebcacheServer, archive: Archive, mirror: FakeMirror, browser: Browser, artefacts: Path
) -> None:
    first, second = two_promotes_and_a_verify(lab, archive)
    assert get(lab.url, "/down/dists/bookworm/InRelease").status in (502, 504)
    mirror.set_fault("/debian/dists/bookworm/Release", Fault.status(503, times=1))
    assert get(lab.url, "/debian/dists/bookworm/Release").status == 503
    # The failover penalty lasts FAILED_URL_PENALTY seconds: read it at once, over HTTP.
    served = parse_html(get(lab.url, "/_/").body.decode())
    penalty = {r["name"].text(): r["failover penalty"].text() for r in table_after(served, "name")}
    assert penalty["down"].startswith(f"{lab.config.upstreams['down'].urls[0]} tried last for ")
    assert penalty["down"].endswith(" s more")
    files = json.loads(get(lab.url, f"/_/api/manifests/{second}").body)["entries"]

    url = f"{lab.url}/_/"
    page = browser.dom(url)
    with screenshot_on_failure(browser, url, artefacts / "status.png"):
        branches = {row["branch"].text(): row for row in table_after(page, "branch")}
        assert list(branches) == ["fresh", "lab"]
        row = branches["lab"]
        assert [a.attrs["href"] for a in row["branch"].iter("a")] == ["branches/lab"]
        assert row["manifest"].text() == second[:12]
        assert [a.attrs["href"] for a in row["manifest"].iter("a")] == [f"api/manifests/{second}"]
        assert row["label"].text() == LABEL
        assert row["note"].text() == NOTE
        assert row["files"].text() == str(len(files))
        assert (
            row["blobs"]
            .text()
            .startswith(f"all {len({f['sha256'] for f in files})} blobs present (verify of ")
        )
        assert row["last promote or rollback"].text().endswith(" UTC")
        # Promoted after the last verify: that verify says nothing of it.
        assert branches["fresh"]["blobs"].text() == "not verified yet"
        assert branches["fresh"]["manifest"].text() == first[:12]
        assert branches["fresh"]["note"].text() == "-"

        upstreams = {row["name"].text(): row for row in table_after(page, "name")}
        assert upstreams["debian"]["last success"].text().endswith(" UTC")
        assert upstreams["debian"]["last failure"].text().endswith(" UTC")
        assert upstreams["debian"]["why"].text() == f"{mirror.url}/debian: HTTP 503"
        down = upstreams["down"]
        assert down["last failure"].text().endswith(" UTC")
        assert down["why"].text().startswith(f"{lab.config.upstreams['down'].urls[0]}: ")
        assert down["last success"].text() == "-"

        recordings = {row["recording"].text() for row in table_after(page, "recording")}
        assert recordings == {"run-1", "run-2"}
        no_markup_from_text(page)


def test_a_branch_page_shows_its_history_and_what_its_last_promote_changed(
    lab: DebcacheServer, archive: Archive, browser: Browser, artefacts: Path
) -> None:
    first, second = two_promotes_and_a_verify(lab, archive)
    url = f"{lab.url}/_/branches/lab"
    page = browser.dom(url)
    with screenshot_on_failure(browser, url, artefacts / "branch-lab.png"):
        assert [h1.text() for h1 in page.iter("h1")] == ["Branch lab"]
        assert next(page.iter("a")).attrs["href"] == "../"  # back to the status page
        summary = table_after(page, "branch")
        assert [(r["label"].text(), r["note"].text()) for r in summary] == [(LABEL, NOTE)]

        history = table_after(page, "when")
        assert [(r["action"].text(), r["manifest"].text(), r["from"].text()) for r in history] == [
            ("promote", second[:12], first[:12]),
            ("promote", first[:12], "-"),
        ]
        assert [r["note"].text() for r in history] == [NOTE, "the first"]
        assert [a.attrs["href"] for a in history[0]["manifest"].iter("a")] == [
            f"../api/manifests/{second}"
        ]

        # The diff is `debcache diff PREVIOUS BRANCH`'s, row for row.
        cli = run(lab, "diff", first, "lab", "--json")
        assert cli.exit_code == 0, cli.output
        expected = json.loads(cli.output)["suites"]
        assert [s["upstream"] + " " + s["suite"] for s in expected] == ["debian bookworm"]
        assert [h3.text() for h3 in page.iter("h3")] == ["debian bookworm"]
        packages = expected[0]["added"]
        assert packages and not expected[0]["removed"] and not expected[0]["changed"]
        rows = table_after(page, "change")
        assert [[cell.text() for cell in row.values()] for row in rows] == [
            ["added", p["package"], p["architecture"], p["version"]] for p in packages
        ]
        index_summary = [p.text() for p in page.iter("p") if p.text().startswith("Index files: ")]
        assert len(index_summary) == (1 if expected[0]["index_files"] else 0)
        intro = f"From manifest {first[:12]} to branch lab (manifest {second[:12]})."
        assert intro in [p.text() for p in page.iter("p")]
        no_markup_from_text(page)


def test_a_first_promote_has_nothing_to_compare_and_an_unknown_branch_is_a_404(
    lab: DebcacheServer, archive: Archive
) -> None:
    record(lab, "run-1", ["dists/bookworm/InRelease"])
    promote(lab, "lab", freeze_json(lab, "run-1")["id"])
    page = parse_html(get(lab.url, "/_/branches/lab").body.decode())
    assert "no earlier one to compare" in " ".join(p.text() for p in page.iter("p"))

    reply = get(lab.url, "/_/branches/nope")
    assert reply.status == 404 and reply.header("Content-Type").startswith("text/plain")
    assert reply.body.count(b"\n") == 1 and reply.body.startswith(b"No branch named 'nope'")
    index = json.loads(get(lab.url, "/_/api/").body)["endpoints"]
    assert {"method": "GET", "path": "/_/branches/{branch}"}.items() <= next(
        e for e in index if e["path"] == "/_/branches/{branch}"
    ).items()


def test_a_failed_check_leaves_a_screenshot(
    lab: DebcacheServer, browser: Browser, artefacts: Path
) -> None:
    path = artefacts / "status.png"
    url = f"{lab.url}/_/"
    with pytest.raises(AssertionError) as failure, screenshot_on_failure(browser, url, path):
        raise AssertionError("a check failed")
    assert path.read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
    assert f"screenshot of {lab.url}/_/: {path}" in failure.value.__notes__

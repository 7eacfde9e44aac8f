"""The workbench page in headless Chromium: density, sort, filters, drag-out, regions, audition, the
address bar, collections across a restart, library status, /docs and phone width. Screenshots go to
test-artifacts/."""

from __future__ import annotations

import csv
import io
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import soundfile as sf
from test_server import LiveServer, build_library, copy_index, serve_threads, shared_model
from test_web import (
    ARTIFACTS,
    CHROMIUM,
    CHROMIUM_ARGS,
    WAIT_MS,
    result_ids,
    result_names,
    sync_api,
    wait_results,
)

from audiofind.library.activity import UpdateActivity
from audiofind.server.app import create_app


@pytest.fixture(scope="module", autouse=True)
def _serve_threads() -> Iterator[None]:
    with serve_threads():
        yield


@pytest.fixture(scope="module")
def index_copy(tmp_path_factory: pytest.TempPathFactory, sfx_dir: Path, assets_dir: Path) -> Path:
    """A private copy of the shared test index: these tests write collections into it."""
    _, index_dir = build_library(tmp_path_factory, sfx_dir)
    return copy_index(index_dir, tmp_path_factory.mktemp("workbench-web") / "index")


@pytest.fixture(scope="module")
def server(index_copy: Path) -> Iterator[LiveServer]:
    with LiveServer(create_app(index_copy, model=shared_model())) as live:
        yield live


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield b
        b.close()


def open_page(browser: Any, server: LiveServer, path: str = "/", width: int = 1280, height: int = 900,
              scheme: str = "dark") -> tuple[Any, Any, list[str]]:
    """(context, page, problems): problems collects JS errors and any request to another host."""
    context = browser.new_context(viewport={"width": width, "height": height}, color_scheme=scheme,
                                  bypass_csp=True, accept_downloads=True)
    context.grant_permissions(["clipboard-read", "clipboard-write"], origin=server.url)
    page = context.new_page()
    problems: list[str] = []
    page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
    page.on("console", lambda m: problems.append(f"console: {m.text}") if m.type == "error" else None)
    page.on("request", lambda r: None if r.url.startswith((server.url, "data:")) else problems.append(r.url))
    page.set_default_timeout(WAIT_MS)
    page.goto(server.url + path)
    page.wait_for_function("document.getElementById('library-status').textContent.includes('clips')")
    return context, page, problems


@pytest.fixture
def page(browser: Any, server: LiveServer) -> Iterator[Any]:
    context, page, problems = open_page(browser, server)
    yield page
    context.close()
    assert not problems, problems


def search(page: Any, text: str) -> None:
    page.locator("#q").fill(text)
    wait_results(page, f"new URLSearchParams(location.search).get('q') === {text!r}")


def visible_rows(page: Any) -> int:
    return page.evaluate("[...document.querySelectorAll('.result')].filter(r => { const b ="
                         " r.getBoundingClientRect(); return b.top >= 0 && b.bottom <= innerHeight; })"
                         ".length")


def test_dense_sortable_rows_with_formats_and_filters(page: Any) -> None:
    search(page, "animal sounds")
    assert page.locator(".result").count() == 20
    heights = page.eval_on_selector_all(".result", "rows => rows.map(r => r.getBoundingClientRect().height)")
    assert max(heights) <= 40, heights  # one line per sound
    assert visible_rows(page) >= 15
    first = page.locator(".result").first
    assert re.fullmatch(r"\d+(\.\d+)? kHz", first.locator(".rate").inner_text())
    assert first.locator(".chans").inner_text() in ("mono", "stereo")
    assert first.locator(".match").inner_text().strip() in ("—",) or re.fullmatch(
        r"[01]\.\d\d", first.locator(".match").inner_text().strip())
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "workbench-dense.png"))

    page.locator("#sort").select_option("name")
    names = result_names(page)
    assert names == sorted(names, key=str.lower) and "sort=name" in page.url
    page.locator("#sort").select_option("duration")
    durations = [float(d.split()[0]) for d in page.locator(".result .duration").all_inner_texts()]
    assert durations == sorted(durations)

    page.locator("#view-toggle").click()
    assert page.locator("#view-toggle").get_attribute("aria-pressed") == "true"
    roomy = page.eval_on_selector_all(".result", "rs => rs.map(r => r.getBoundingClientRect().height)")
    assert min(roomy) > 50
    page.screenshot(path=str(ARTIFACTS / "workbench-roomy.png"))
    page.locator("#view-toggle").click()

    page.locator("#sample-rate").select_option("22050")
    page.wait_for_function("[...document.querySelectorAll('.result .rate')].every(r => r.textContent ==="
                           " '22.05 kHz') && document.querySelectorAll('.result').length > 0")
    assert "sr=22050" in page.url
    page.locator("#sample-rate").select_option("")
    page.locator("#channels").select_option("2")
    page.wait_for_function("[...document.querySelectorAll('.result .chans')].every(r => r.textContent ==="
                           " 'stereo') && document.querySelectorAll('.result').length === 3")

    tag = page.locator(".result .tag").first.inner_text()  # a tag narrows the search: it joins the query
    page.locator(".result .tag").first.click()
    page.wait_for_function(f"document.getElementById('q').value === {('animal sounds ' + tag)!r}")


def test_drag_carries_download_url_and_path_copies(page: Any, server: LiveServer) -> None:
    search(page, "explosion")
    row = page.locator(".result").first
    clip_id, name = row.get_attribute("data-id"), row.locator(".name").inner_text()
    data = page.evaluate("""() => {
        const dt = new DataTransfer();
        const row = document.querySelector('.result');
        row.dispatchEvent(new DragEvent('dragstart', {dataTransfer: dt, bubbles: true}));
        return {url: dt.getData('DownloadURL'), plain: dt.getData('text/plain'),
                uri: dt.getData('text/uri-list')};
    }""")
    url = f"{server.url}/api/clips/{clip_id}/download"
    assert data["url"] == f"audio/ogg:{name}:{url}" and data["uri"] == url
    r = httpx.get(url)
    assert r.status_code == 200 and r.headers["content-disposition"].startswith("attachment")
    assert data["plain"].endswith("/" + name)

    with page.expect_download() as download:  # the download button saves the file
        row.locator(".download").click()
    assert download.value.suggested_filename == name

    row.locator(".copy").click()
    page.wait_for_function("document.getElementById('message').textContent.startsWith('Copied')")
    assert page.evaluate("navigator.clipboard.readText()") == data["plain"]


def test_region_audition_and_export(page: Any, server: LiveServer) -> None:
    search(page, "a bell rings")
    page.locator("#sort").select_option("name")
    row = page.locator(".result", has=page.locator(".name", has_text="bell.wav"))
    page.wait_for_function("document.querySelector('.result canvas').width > 1")
    box = row.locator("canvas").bounding_box()
    y = box["y"] + box["height"] / 2
    page.mouse.move(box["x"] + box["width"] * 0.2, y)
    page.mouse.down()
    page.mouse.move(box["x"] + box["width"] * 0.4, y, steps=4)
    page.mouse.move(box["x"] + box["width"] * 0.6, y, steps=4)
    page.mouse.up()
    region = row.locator(".region")
    assert region.is_visible() and "Region" in region.inner_text()
    href = row.locator(".region-save").get_attribute("href")
    m = re.fullmatch(r"/api/clips/(\d+)/region\.wav\?start=([\d.]+)&end=([\d.]+)", href)
    assert m, href
    start, end = float(m.group(2)), float(m.group(3))
    assert 0.3 < start < 0.5 and 1.1 < end < 1.3  # 20% and 60% of a 2.05 s clip
    wav = httpx.get(server.url + href)
    info = sf.info(io.BytesIO(wav.content))
    assert (info.samplerate, info.channels) == (44_100, 1)
    assert info.frames == round(end * 44_100) - round(start * 44_100)
    page.screenshot(path=str(ARTIFACTS / "workbench-region.png"))

    # audition the region: it starts at its start and stops by itself at its end
    row.locator(".region-play").click()
    page.wait_for_function("!document.getElementById('player').paused")
    page.wait_for_function(f"document.getElementById('player').paused"
                           f" && document.getElementById('player').currentTime >= {end} - 0.05")
    assert page.evaluate("document.getElementById('player').currentTime") < end + 0.25

    # volume and loop reach the player; Escape stops everything
    page.eval_on_selector("#volume", "v => { v.value = '0.3'; v.dispatchEvent(new Event('input')); }")
    page.locator("#loop").check()
    row.locator(".play").click()
    page.wait_for_function("!document.getElementById('player').paused")
    assert page.evaluate("[player.volume, player.loop]") == [0.3, True]
    page.keyboard.press("Escape")
    page.wait_for_function("document.getElementById('player').paused")
    page.locator("#loop").uncheck()

    # auto-play on arrow keys: the next row plays as it is selected
    page.locator("#autoplay").check()
    row.locator(".name").click()
    page.keyboard.press("ArrowDown")
    next_id = page.locator('.result[aria-selected="true"]').get_attribute("data-id")
    page.wait_for_function(f"player.src.endsWith('/api/clips/{next_id}/audio') && !player.paused")
    page.keyboard.press("Escape")
    page.wait_for_function("player.paused")
    page.locator("#autoplay").uncheck()


def test_address_round_trip_with_back_and_forward(page: Any, browser: Any, server: LiveServer) -> None:
    search(page, "glass breaking")
    glass = result_ids(page)
    search(page, "a bird singing")
    page.locator("#sample-rate").select_option("44100")
    page.locator("#mode").select_option("audio")
    page.locator("#sort").select_option("name")
    wait_results(page, "location.search.includes('sort=name') && location.search.includes('sr=44100')")
    birds = result_ids(page)
    link = page.url
    assert "q=a+bird+singing" in link and "mode=audio" in link

    page.go_back()  # each change was one step: the sort goes first
    page.wait_for_function("document.getElementById('sort').value === 'match'")
    assert "mode=audio" in page.url
    page.go_back()  # then the mode
    page.wait_for_function("document.getElementById('mode').value === 'hybrid'")
    page.go_back()  # then the sample rate filter
    page.wait_for_function("document.getElementById('sample-rate').value === ''"
                           " && document.getElementById('q').value === 'a bird singing'")
    page.go_back()
    page.wait_for_function("document.getElementById('q').value === 'glass breaking'")
    wait_results(page, f"JSON.stringify([...document.querySelectorAll('.result')].map(r => r.dataset.id))"
                       f" === {json.dumps(glass, separators=(',', ':'))!r}")
    page.go_forward()
    page.wait_for_function("document.getElementById('q').value === 'a bird singing'")

    # the link opens the same results in a fresh page
    context, other, problems = open_page(browser, server, link.removeprefix(server.url))
    wait_results(other)
    assert other.locator("#sort").input_value() == "name" and other.locator("#mode").input_value() == "audio"
    assert other.locator("#sample-rate").input_value() == "44100"
    assert result_ids(other) == birds
    # more like this is an address too
    first = other.locator(".result").first.get_attribute("data-id")
    other.locator(".result").first.locator(".more").click()
    other.wait_for_function(f"location.search.includes('like={first}')")
    wait_results(other, f"!document.getElementById('result-{first}')")
    context.close()
    assert not problems, problems


def test_collections_survive_a_restart(browser: Any, index_copy: Path) -> None:
    with LiveServer(create_app(index_copy, model=shared_model())) as live:
        context, page, problems = open_page(browser, live)
        search(page, "horse")
        first, second = page.locator(".result").nth(0), page.locator(".result").nth(1)
        fav_id, fav_name = first.get_attribute("data-id"), first.locator(".name").inner_text()
        first.locator(".star").click()
        page.wait_for_function("document.querySelector('.result .star').ariaPressed === 'true'")
        kept_name = second.locator(".name").inner_text()
        second.locator(".name").click()
        page.keyboard.press("a")  # keyboard: A opens "add to collection" for the selected row
        page.locator("#collect-new").fill("Keepers")
        page.locator("#collect-add").click()
        page.wait_for_selector('.collection[data-name="Keepers"]')
        page.screenshot(path=str(ARTIFACTS / "workbench-collections.png"))
        context.close()
        assert not problems, problems

    with LiveServer(create_app(index_copy, model=shared_model())) as live:  # a new server process state
        context, page, problems = open_page(browser, live)
        page.wait_for_function("document.querySelector('.collection[data-name=\"Keepers\"]')"
                               "?.textContent === 'Keepers (1)'")
        page.locator('.collection[data-name="favourites"]').click()
        wait_results(page, "location.search.includes('collection=favourites')")
        assert result_names(page) == [fav_name] and result_ids(page) == [fav_id]
        page.locator('.collection[data-name="Keepers"]').click()
        wait_results(page, f"names.length === 1 && names[0] === {kept_name!r}")
        href = page.locator("#export-csv").get_attribute("href")
        rows = list(csv.DictReader(io.StringIO(httpx.get(live.url + href).text)))
        assert [Path(r["path"]).name for r in rows] == [kept_name]
        assert page.locator("#export-zip").get_attribute("href") == "/api/collections/Keepers/export.zip"
        page.screenshot(path=str(ARTIFACTS / "workbench-collection-after-restart.png"))
        context.close()
        assert not problems, problems


def test_status_shows_roots_and_a_run_in_progress(page: Any, index_copy: Path) -> None:
    assert re.search(r"1 root: lib", page.locator("#library-roots").inner_text())
    assert "updated" in page.locator("#library-status").inner_text()
    assert page.locator("#indexing").is_hidden()
    with UpdateActivity(index_copy) as activity:
        activity.wrap(False)({"done": 4, "total": 9})
        page.wait_for_selector("#indexing:not([hidden])")  # the page polls /api/status
        assert page.locator("#indexing").inner_text() == "Indexing… 4/9 files"
    page.wait_for_selector("#indexing", state="hidden")


def test_docs_under_strict_csp(browser: Any, server: LiveServer) -> None:
    context = browser.new_context()
    page = context.new_page()
    messages: list[str] = []
    outside: list[str] = []
    page.on("console", lambda m: messages.append(m.text) if m.type in ("error", "warning") else None)
    page.on("request", lambda r: None if r.url.startswith(server.url) else outside.append(r.url))
    page.set_default_timeout(WAIT_MS)
    page.goto(server.url + "/docs")
    page.wait_for_selector('.opblock-summary-path[data-path="/api/collections"]')
    page.screenshot(path=str(ARTIFACTS / "workbench-docs.png"))
    context.close()
    assert not outside, outside
    assert not [m for m in messages if "Content Security Policy" in m or "Refused" in m], messages


def test_phone_width(browser: Any, server: LiveServer) -> None:
    context, page, problems = open_page(browser, server, "/?q=footsteps", width=390, height=844,
                                        scheme="light")
    wait_results(page)
    assert page.evaluate("document.documentElement.scrollWidth <= innerWidth")
    row = page.locator(".result").first
    row.locator(".play").click()
    page.wait_for_function("!document.getElementById('player').paused")
    page.keyboard.press("Escape")
    page.screenshot(path=str(ARTIFACTS / "workbench-phone.png"), full_page=False)
    context.close()
    assert not problems, problems

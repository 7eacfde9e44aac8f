"""The web page in headless Chromium (Playwright, sync API) against a real server on loopback."""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

os.environ.setdefault("AUDIOFIND_ASSETS", str(Path(__file__).resolve().parents[2] / "shared" / "assets"))

from test_server import CLIPS, LiveServer, build_library, serve_threads, shared_model  # noqa: E402

from audiofind.server.app import create_app  # noqa: E402

CHROMIUM = os.environ.get("AUDIOFIND_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--autoplay-policy=no-user-gesture-required",
    "--mute-audio",
]
ARTIFACTS = Path(__file__).resolve().parents[1] / "test-artifacts"
WAIT_MS = 30_000

sync_api = pytest.importorskip("playwright.sync_api")
expect = sync_api.expect
expect.set_options(timeout=WAIT_MS)
if not shutil.which(CHROMIUM) and not Path(CHROMIUM).is_file():
    pytest.skip(f"no Chromium at {CHROMIUM} (set AUDIOFIND_CHROMIUM)", allow_module_level=True)


@pytest.fixture(scope="module", autouse=True)
def _serve_threads() -> Iterator[None]:
    with serve_threads():
        yield


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, sfx_dir: Path, assets_dir: Path) -> Iterator[LiveServer]:
    _, index_dir = build_library(tmp_path_factory, sfx_dir)
    with LiveServer(create_app(index_dir, model=shared_model())) as live:
        yield live


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield b
        b.close()


@pytest.fixture
def page(browser: Any, server: LiveServer) -> Iterator[Any]:
    """A fresh page on the app; fails the test on any JavaScript error or request to another host."""
    # the page's CSP forbids eval, which Playwright's wait_for_function needs; test_csp_* checks it unbypassed
    context = browser.new_context(
        viewport={"width": 1200, "height": 900}, color_scheme="dark", bypass_csp=True
    )
    page = context.new_page()
    problems: list[str] = []
    page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
    page.on("console", lambda m: problems.append(f"console: {m.text}") if m.type == "error" else None)
    page.on("request", lambda r: None if r.url.startswith((server.url, "data:")) else problems.append(r.url))
    page.set_default_timeout(WAIT_MS)
    page.goto(server.url + "/")
    page.wait_for_function("document.getElementById('library-status').textContent.includes('clips')")
    yield page
    context.close()
    assert not problems, problems


def result_names(page: Any) -> list[str]:
    return page.locator(".result .name").all_inner_texts()


def result_ids(page: Any) -> list[str]:
    return page.eval_on_selector_all(".result", "rows => rows.map(r => r.dataset.id)")


def wait_results(page: Any, predicate_js: str = "true") -> None:
    """Until the list is non-empty, no request is in flight, and `predicate_js` (over `names`) holds."""
    page.wait_for_function(
        "() => { const rows = [...document.querySelectorAll('.result .name')];"
        " const names = rows.map(r => r.textContent);"
        " return rows.length > 0 && !document.getElementById('results').hasAttribute('aria-busy')"
        f" && ({predicate_js}); }}"
    )


def test_type_query_play_and_more_like_this(page: Any) -> None:
    status = page.locator("#library-status").inner_text()
    assert f"{len(CLIPS)} clips" in status
    searches: list[str] = []
    page.on("request", lambda r: searches.append(r.url) if "/api/search" in r.url else None)
    page.locator("#q").press_sequentially("an explosion", delay=40)
    wait_results(page, "names.slice(0, 3).some(n => n.includes('explosion'))")
    assert len(searches) <= 3, searches  # debounced: not one request per keystroke
    names = result_names(page)
    assert len(names) == len(CLIPS) and len(set(result_ids(page))) == len(names)
    assert re.search(r"\d+ results for “an explosion”", page.locator("#message").inner_text())
    ranks = page.locator(".result .rank").all_inner_texts()
    assert ranks == [str(i + 1) for i in range(len(ranks))]
    first = page.locator(".result").first
    assert first.locator(".tag").count() >= 1 and first.locator(".folder").inner_text().strip()
    assert re.fullmatch(r"\d+(\.\d)? s", first.locator(".duration").inner_text())

    # waveforms are drawn from /api/clips/{id}/waveform
    page.wait_for_function(
        "() => { const c = document.querySelector('.result canvas');"
        " const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;"
        " let n = 0; for (let i = 3; i < d.length; i += 4) n += d[i] > 0; return n > 200; }"
    )

    # play: the audio element's clock advances, the button turns into pause
    first.locator(".play").click()
    page.wait_for_function("document.getElementById('player').currentTime > 0.05")
    t1 = page.evaluate("document.getElementById('player').currentTime")
    page.wait_for_function(f"document.getElementById('player').currentTime > {t1} + 0.1")
    expect(first.locator(".play")).to_have_attribute("aria-label", re.compile(r"^Pause "))
    expect(first).to_have_class(re.compile(r"(^|\s)playing(\s|$)"))
    assert first.locator(".play").get_attribute("aria-label").startswith("Pause")
    assert first.get_attribute("class").split().count("playing") == 1
    src = page.evaluate("document.getElementById('player').src")
    assert src.endswith(f"/api/clips/{result_ids(page)[0]}/audio")

    # seek by clicking the waveform near its end
    box = first.locator("canvas").bounding_box()
    page.mouse.click(box["x"] + box["width"] * 0.8, box["y"] + box["height"] / 2)
    page.wait_for_function(
        "() => { const p = document.getElementById('player');"
        " return p.duration > 0 && p.currentTime / p.duration > 0.6; }"
    )
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "web.png"))

    # more like this: the list is replaced by neighbours of that clip (itself left out)
    before, source_id, source_name = result_ids(page), result_ids(page)[0], result_names(page)[0]
    first.locator(".more").click()
    page.wait_for_selector("#context:not([hidden])")
    assert source_name in page.locator("#context-text").inner_text()
    wait_results(page, f"!document.getElementById('result-{source_id}')")
    after = result_ids(page)
    assert after != before and source_id not in after
    # typing again goes back to text search
    page.locator("#q").fill("a bird singing")
    wait_results(page, "names.slice(0, 3).some(n => n.includes('bird'))")
    assert page.locator("#context").is_hidden()


def test_keyboard_navigation(page: Any) -> None:
    page.locator("#q").fill("animal sounds")
    wait_results(page)
    page.locator("#q").press("ArrowDown")  # into the list: the first result takes the focus
    assert page.evaluate("document.activeElement.dataset.index") == "0"
    page.keyboard.press("ArrowDown")
    page.keyboard.press("ArrowDown")
    page.keyboard.press("ArrowUp")
    selected = page.locator('.result[aria-selected="true"]')
    assert selected.count() == 1 and selected.get_attribute("data-index") == "1"
    assert page.evaluate("document.activeElement.dataset.index") == "1"
    clip_id = selected.get_attribute("data-id")

    button = page.locator(".play").nth(1)
    page.keyboard.press("Space")  # plays the selected result
    page.wait_for_function("document.getElementById('player').currentTime > 0.05")
    assert page.evaluate("document.getElementById('player').src").endswith(f"/api/clips/{clip_id}/audio")
    expect(button).to_have_attribute("aria-label", re.compile(r"^Pause "))  # set by the page's play handler
    page.keyboard.press("Space")  # and pauses it
    page.wait_for_function("document.getElementById('player').paused")
    # `paused` flips at once; the label follows in the page's `pause` handler, a task later: wait for it
    expect(button).to_have_attribute("aria-label", re.compile(r"^Play "))
    assert button.get_attribute("aria-label").startswith("Play")
    assert page.evaluate("document.getElementById('player').paused")

    name = selected.locator(".name").inner_text()
    page.keyboard.press("Enter")  # more like this
    page.wait_for_selector("#context:not([hidden])")
    assert name in page.locator("#context-text").inner_text()
    wait_results(page, f"!document.getElementById('result-{clip_id}')")

    page.keyboard.press("Escape")  # back to the text results
    page.wait_for_selector("#context", state="hidden")
    wait_results(page, f"!!document.getElementById('result-{clip_id}')")  # the text results are back
    page.locator(".result").first.focus()
    assert page.evaluate("document.activeElement.dataset.index") == "0"
    page.keyboard.press("ArrowUp")  # from the top of the list back to the search box
    assert page.evaluate("document.activeElement.id") == "q"


def test_filters_and_stale_responses(page: Any, server: LiveServer) -> None:
    # a slow answer to an older query must not replace the newer one's results: the sword answer is
    # held back (and not aborted) until the glass results are shown, then let through
    page.evaluate("""() => {
        const real = window.fetch;
        let release;
        const gate = new Promise((resolve) => { release = resolve; });
        window.sword = { asked: false, read: false, release: () => release() };
        window.fetch = (url, opts) => {
            if (!String(url).includes('q=sword')) return real(url, opts);
            window.sword.asked = true;
            return gate.then(() => real(url, {...opts, signal: undefined})).then((response) => {
                const json = response.json.bind(response);
                response.json = () => json().then((body) => { window.sword.read = true; return body; });
                return response;
            });
        };
    }""")
    page.locator("#q").fill("sword")
    page.wait_for_function("window.sword.asked")  # past the debounce: the sword request is in flight
    page.locator("#q").fill("glass breaking")
    wait_results(page, "names.slice(0, 3).some(n => n.includes('glass'))")
    glass = result_names(page)
    page.evaluate("window.sword.release()")
    # the page has read the sword answer; dropping it follows in the same microtask run, before this returns
    page.wait_for_function("window.sword.read")
    assert result_names(page) == glass
    assert not page.locator("#results").get_attribute("aria-busy")

    page.locator("#max-duration").fill("1")
    page.wait_for_function(
        "[...document.querySelectorAll('.result .duration')]"
        ".every(d => parseFloat(d.textContent) <= 1.0) && document.querySelectorAll('.result').length > 0"
    )
    durations = [float(d.split()[0]) for d in page.locator(".result .duration").all_inner_texts()]
    assert durations and max(durations) <= 1.0 and len(durations) < len(CLIPS)

    page.locator("#clear-filters").click()
    wait_results(page, f"names.length === {len(CLIPS)}")  # the unfiltered list, not the one it replaces
    folder = page.locator(".result .folder").first.inner_text().strip("\u200e ")
    page.locator(".result .folder").first.click()  # a result's folder becomes the folder filter
    assert page.locator("#folder").input_value() == folder
    page.wait_for_function(
        f"[...document.querySelectorAll('.result .folder')].every(f => f.textContent.includes({folder!r}))"
        " && document.querySelectorAll('.result').length > 0"
    )
    expected = sum(c.startswith(Path(folder).name + "/") for c in CLIPS)
    assert page.locator(".result").count() == expected


def test_drop_a_file_to_search_by_example(page: Any) -> None:
    page.locator("#q").fill("horse")
    wait_results(page)
    source = result_ids(page)[0]
    source_name = result_names(page)[0]
    # what a drag from the file manager delivers: a drop event carrying a File
    page.evaluate(
        """async (id) => {
        const blob = await (await fetch(`/api/clips/${id}/audio`)).blob();
        const dt = new DataTransfer();
        dt.items.add(new File([blob], 'dropped.ogg', {type: 'audio/ogg'}));
        window.dispatchEvent(new DragEvent('dragenter', {dataTransfer: dt}));
        window.dispatchEvent(new DragEvent('drop', {dataTransfer: dt, cancelable: true}));
    }""",
        source,
    )
    page.wait_for_selector("#context:not([hidden])")
    assert "dropped.ogg" in page.locator("#context-text").inner_text()
    assert page.locator("#drop-overlay").is_hidden()
    # the drop's results: other sounds like it; the dropped clip itself (same bytes) is left out
    wait_results(page, "![...document.querySelectorAll('#results > [data-id]')]"
                       f".some(e => e.dataset.id === '{source}')")
    assert source not in result_ids(page) and source_name not in result_names(page)


def test_page_works_under_its_content_security_policy(browser: Any, server: LiveServer) -> None:
    context = browser.new_context(color_scheme="light")
    page = context.new_page()
    messages: list[str] = []
    page.on("console", lambda m: messages.append(m.text) if m.type in ("error", "warning") else None)
    page.on("pageerror", lambda e: messages.append(str(e)))
    page.set_default_timeout(WAIT_MS)
    page.goto(server.url + "/?q=metal+clang")  # a query in the address searches on load
    page.wait_for_selector(".result .tag")
    assert page.locator(".result").count() == len(CLIPS)
    context.close()
    assert not [m for m in messages if "Content Security Policy" in m or "Refused" in m], messages

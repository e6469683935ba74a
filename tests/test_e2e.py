"""End to end against the real app on localhost: a browser (Debian's Chromium driven by Playwright) and two
`gradio_client` users at once. The app runs with the shipped nano weights, as a user would start it (takes up to 20 s,
so that long takes are tried). Screenshots of each tab, at 1440×900 and at a phone's 390×844, go to artifacts/ (or
$E2E_ARTIFACTS); docs/screenshots/ holds the ones the README shows."""
import os
import re
import shutil
import threading
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from bench.server import running_app

pytestmark = pytest.mark.slow  # a real server (and a browser): run by `make test-slow`, CI's own step

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = "/usr/bin/chromium"


@pytest.fixture(scope="module")
def app_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("app")


@pytest.fixture(scope="module")
def server(app_dir):
    with running_app(["--ratings-db", str(app_dir / "ratings.sqlite"), "--max-duration", "20"], app_dir) as (url, _, _):
        yield url


@pytest.fixture(scope="module")
def browser():
    if not Path(CHROMIUM).exists():
        pytest.skip("needs Debian's chromium (apt-get install chromium)")
    from playwright.sync_api import sync_playwright  # noqa: PLC0415 (optional: the browser tests skip without it)

    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield chromium
        chromium.close()


@pytest.fixture(scope="module")
def artifacts():
    folder = Path(os.environ.get("E2E_ARTIFACTS", ROOT / "artifacts"))
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def open_page(browser, server, width=1440, height=900):
    page = browser.new_page(viewport={"width": width, "height": height})
    page.goto(server)
    return page


def set_number(page, elem_id: str, value, settled: bool = False) -> None:
    """Type into a slider's number box, as a user would; `settled`: wait until the slider shows the value (one the
    page accepts), typing it again if it did not (under CI load a box in a just-opened accordion once kept the old
    value for 10 s), so a click right after sends it."""
    from playwright.sync_api import expect  # noqa: PLC0415

    box = page.locator(f"#{elem_id} input[type=number]")
    expect(box).to_be_editable()
    for attempt in range(3 if settled else 1):
        box.fill(str(value))
        box.press("Enter")
        box.blur()  # the slider takes the value as it loses focus: under load a click right after could send the old
        if not settled:
            break
        try:
            expect(page.locator(f"#{elem_id} input[type=range]")).to_have_value(str(value), timeout=5_000)
            break
        except AssertionError:
            if attempt == 2:
                raise
    page.wait_for_timeout(300)


def generate(page, expect, takes: int, column: str = ".merged-clip", button: str = "#generate") -> None:
    before = page.locator("#info").inner_text()
    if button == "Control+Enter":  # the keyboard shortcut, from anywhere on the page
        page.locator("h1").first.click()
        page.keyboard.press("Control+Enter")
    else:
        page.locator(button).click()
    expect(page.locator("#info")).not_to_have_text(before, timeout=180_000)
    expect(page.locator(f"{column}:visible")).to_have_count(takes, timeout=60_000)


def test_browser_generate_compare_and_rate(browser, server, artifacts):
    from playwright.sync_api import expect  # noqa: PLC0415

    page = open_page(browser, server)
    seed_box = page.locator("#seed textarea, #seed input").first
    # what nano hears, as the prompt is typed; its own wording one click away, the user's words one more
    page.locator("#prompt textarea, #prompt input").first.fill("workout playlist, high energy, 130 bpm")
    expect(page.locator("#heard")).to_contain_text("130 bpm → 120 BPM", timeout=30_000)
    page.locator("#use-nano").click()
    expect(page.locator("#prompt textarea, #prompt input").first).to_have_value(
        "120 BPM fast energetic techno, drums", timeout=30_000)
    page.locator("#own-words").click()
    expect(page.locator("#prompt textarea, #prompt input").first).to_have_value(
        "workout playlist, high energy, 130 bpm")
    expect(page.locator("#merge-info")).to_contain_text("λ = 0.50")  # the merge line from the start
    # takes: every press new ones (seed unlocked), the same again once locked; Enter in the prompt generates too
    set_number(page, "clips", 3)
    seeds = []
    for how in ("click", "enter"):
        if how == "click":
            page.locator("#generate").click()
        else:
            page.locator("#prompt textarea, #prompt input").first.press("Enter")
        expect(seed_box).not_to_have_value(seeds[-1] if seeds else "", timeout=120_000)
        expect(page.locator(".merged-clip:visible")).to_have_count(3, timeout=120_000)
        seeds.append(seed_box.input_value())
    assert seeds[0].isdigit() and seeds[1].isdigit() and seeds[0] != seeds[1]
    expect(page.locator("#played")).to_contain_text("What each clip played")
    expect(page.locator("#played")).to_contain_text("tempo 120 BPM")  # checked as nano heard it, not as 130
    assert "130" not in page.locator("#played").inner_text()
    page.locator("#lock-seed input[type=checkbox]").check()
    generate(page, expect, 3)
    expect(page.locator("#files")).to_contain_text(f"seed{seeds[1]}_")
    assert seed_box.input_value() == seeds[1]
    # a refused prompt leaves the takes in place, with the reason beside them
    page.locator("#prompt textarea, #prompt input").first.fill("x" * 600)
    page.locator("#generate").click()
    expect(page.locator("#message")).to_contain_text("the limit is 500", timeout=60_000)
    expect(page.locator(".merged-clip:visible")).to_have_count(3)
    page.locator("#prompt textarea, #prompt input").first.fill("calm piano with soft strings")
    set_number(page, "lambda", 0.8)  # λ typed into its number box re-merges
    expect(page.locator("#merge-info")).to_contain_text("λ = 0.80", timeout=60_000)
    page.locator("#compare input[type=checkbox]").check()
    page.locator("#generate").click()
    expect(page.locator("#info")).to_contain_text("CFG costs", timeout=120_000)
    expect(page.locator(".base-clip:visible")).to_have_count(3)
    page.screenshot(path=str(artifacts / "e2e-generate.png"), full_page=True)
    page.evaluate("window.scrollTo(0, 0)")
    page.screenshot(path=str(artifacts / "generate-1440x900.png"))
    assert page.locator("#generate").bounding_box()["y"] < 900  # Generate is on screen without scrolling


def test_blind_votes_never_carry_over_and_results_show_on_a_fresh_page(browser, server, artifacts, app_dir):
    """…and the browser is one rater: its votes before and after a page reload carry one identity, kept in its own
    storage (gr.BrowserState)."""
    import sqlite3  # noqa: PLC0415

    from playwright.sync_api import expect  # noqa: PLC0415

    page = open_page(browser, server)
    page.get_by_role("tab", name="Blind A/B").click()
    for round_ in range(3):
        if round_ == 2:  # a reload: Gradio's session is new, the browser's rater identity is not
            page.reload()
            page.get_by_role("tab", name="Blind A/B").click()
        page.locator("#new-pair" if round_ != 1 else "#next-pair").click()
        expect(page.locator("#reveal")).to_contain_text("Listen to both sets", timeout=120_000)
        for vote in ("#vote-quality", "#vote-diversity"):  # nothing left over from the pair before
            expect(page.locator(f"{vote} input:checked")).to_have_count(0)
        page.locator("#vote-quality").get_by_text("A", exact=True).click()
        page.locator("#vote-diversity").get_by_text("B", exact=True).click()
        page.locator("#submit-rating").dblclick()  # a double click: the same reveal, stored once
        expect(page.locator("#reveal")).to_contain_text("A was", timeout=60_000)
        page.wait_for_timeout(1500)
        expect(page.locator("#reveal")).to_contain_text("A was")
        expect(page.locator("#submit-rating")).to_be_disabled()
    with sqlite3.connect(app_dir / "ratings.sqlite") as db:
        raters = [row[0] for row in db.execute("SELECT session FROM ratings ORDER BY id")]
    assert len(set(raters[-3:])) == 1 and raters[-1].startswith("browser:")
    assert raters[-1] not in raters[:-3]  # another browser (test above) is another rater
    page.evaluate("window.scrollTo(0, 0)")
    page.screenshot(path=str(artifacts / "ab-1440x900.png"))
    fresh = open_page(browser, server)  # a new visitor sees the results without pressing Refresh
    fresh.get_by_role("tab", name="Results").click()
    expect(fresh.locator("#results")).to_contain_text("quality", timeout=30_000)
    assert "Error" not in fresh.locator("#results").inner_text()
    fresh.screenshot(path=str(artifacts / "e2e-results.png"), full_page=True)
    fresh.screenshot(path=str(artifacts / "results-1440x900.png"))


def test_stop_during_a_compare_run_keeps_the_previous_takes(browser, server):
    from playwright.sync_api import expect  # noqa: PLC0415

    page = open_page(browser, server)
    page.locator("#prompt textarea, #prompt input").first.fill("Rock song.")
    set_number(page, "clips", 8)
    set_number(page, "duration", 16)
    page.locator("#compare input[type=checkbox]").check()
    generate(page, expect, 8)
    files = page.locator("#files").inner_text()
    for _ in range(5):
        page.locator("#generate").click()
        page.wait_for_timeout(1500)
        page.locator("#stop").click()
        expect(page.locator("#message")).to_contain_text("no new takes were made", timeout=120_000)
        expect(page.locator("#files")).not_to_contain_text("processing", timeout=120_000)  # the job has answered
        expect(page.locator(".merged-clip:visible")).to_have_count(8)
        expect(page.locator(".base-clip:visible")).to_have_count(8)
        assert page.locator("#files").inner_text() == files  # the same takes as before the press
        assert page.get_by_text("Error", exact=True).count() == 0


def test_a_20s_take_starts_with_the_8s_take_of_its_seed_and_can_be_continued(browser, server):
    from gradio_client import Client  # noqa: PLC0415
    from playwright.sync_api import expect  # noqa: PLC0415

    page = open_page(browser, server)
    page.locator("#prompt textarea, #prompt input").first.fill("calm piano")
    set_number(page, "clips", 1)
    set_number(page, "duration", 20)
    page.locator("#seed textarea, #seed input").first.fill("77")  # a typed seed locks itself
    expect(page.locator("#lock-seed input[type=checkbox]")).to_be_checked()
    generate(page, expect, 1)
    expect(page.locator("#files")).to_contain_text("_20s_seed77_")
    expect(page.locator(".merged-clip").first).to_contain_text("0:20", timeout=30_000)  # the player has all 20 s
    client = Client(server, verbose=False)
    takes = [client.predict("calm piano", 1, seconds, "77", 1.0, "q-d", 0.5, False, 3.0, "", 0.0, 0.0,
                            api_name="/generate")[0] for seconds in (8.0, 20.0)]
    (short, rate), (long, _) = [sf.read(t["value"] if isinstance(t, dict) else t) for t in takes]
    head = int(7.5 * rate)  # the last half second differs: the 8 s take's notes end there, the long one's go on
    # the same notes (their codes are equal: tests/test_service.py), each take brought to −14 LUFS on its own: the
    # same audio up to one gain, except where the peak limiter held a peak down a little more in one take (1.3e-3 at
    # most in this test's runs)
    gain = float((short[:head] * long[:head]).sum() / (long[:head] ** 2).sum())
    assert len(long) == 20 * rate and short.shape[1] == 2 and 0.5 < gain < 2
    assert np.abs(short[:head] - gain * long[:head]).max() <= 5e-3
    page.get_by_text("Longer takes and variations").click()  # the folded controls
    page.locator("#vary-take input").first.fill("1")
    page.locator("#vary-from textarea, #vary-from input").first.fill("4")
    set_number(page, "vary-length", 12, settled=True)
    generate(page, expect, 1, button="#new-endings")  # the first 4 s kept, a new ending to 12 s
    expect(page.locator("#info")).to_contain_text("new endings from 4 s")
    expect(page.locator("#files")).to_contain_text("_12s_seed77_q-d-lam0.50-take1-from4s")


def test_the_first_take_is_heard_while_the_takes_are_made(browser, server):
    """The streamed player starts playing before the takes are done (the time it takes is `bench.first_audio`'s)."""
    from playwright.sync_api import expect  # noqa: PLC0415

    if shutil.which("ffmpeg") is None:
        pytest.skip("Gradio streams audio through ffmpeg (make e2e-deps)")
    page = open_page(browser, server)
    page.locator("#prompt textarea, #prompt input").first.fill("rock song with piano")
    set_number(page, "clips", 4)
    set_number(page, "duration", 20, settled=True)
    page.evaluate("""() => { window.__heard = null; document.addEventListener('playing',
        e => { if (e.target.closest('#live')) window.__heard = window.__heard ?? performance.now(); }, true); }""")
    clicked = page.evaluate("() => performance.now()")
    generate(page, expect, 4)
    shown, heard = page.evaluate("() => performance.now()"), page.evaluate("() => window.__heard")
    assert heard is not None and heard < shown, (heard, shown)  # heard first, while they were made
    print(f"first sound {(heard - clicked) / 1000:.2f} s after the click, every take shown after "
          f"{(shown - clicked) / 1000:.2f} s")
    expect(page.locator("#live a[download]")).to_have_attribute("href", re.compile("playlist-file"))


def test_a_typed_lambda_out_of_range_is_refused_and_the_last_one_used(browser, server):
    from playwright.sync_api import expect  # noqa: PLC0415

    page = open_page(browser, server)
    set_number(page, "clips", 1)
    set_number(page, "duration", 1)
    set_number(page, "lambda", 0.3)
    expect(page.locator("#merge-info")).to_contain_text("λ = 0.30", timeout=60_000)
    set_number(page, "lambda", 1.5)
    expect(page.locator("#merge-info")).to_contain_text("λ stays at 0.30", timeout=60_000)
    expect(page.locator("#lambda input[type=number]")).to_have_value("0.3")
    generate(page, expect, 1, button="Control+Enter")
    expect(page.locator("#info")).to_contain_text("λ=0.30")


def test_each_tab_on_a_phone(browser, server, artifacts):
    from playwright.sync_api import expect  # noqa: PLC0415

    page = open_page(browser, server, 390, 844)
    set_number(page, "clips", 2)
    generate(page, expect, 2)
    page.screenshot(path=str(artifacts / "generate-390x844.png"), full_page=True)
    for tab, name in (("Blind A/B", "ab"), ("Results", "results")):
        page.get_by_role("tab", name=tab).click()
        page.wait_for_timeout(500)
        page.screenshot(path=str(artifacts / f"{name}-390x844.png"), full_page=True)


def test_two_api_clients_at_different_lambdas(server):
    from gradio_client import Client  # noqa: PLC0415 (optional client, imported where the test starts a server)

    def call(lam, seed):
        client = Client(server, verbose=False)
        mode = "q-d" if lam else "θ_q ↔ θ_d"  # the mode's key, or its earlier API value (an alias)
        out = client.predict("Rock song.", 2, 1.0, str(seed), 1.0, mode, lam, False, 3.0, "Bad audio quality.",
                             0.0, 0.0, api_name="/generate")
        return [sf.read(o["value"] if isinstance(o, dict) else o)[0] for o in out[:2]]

    alone = {lam: call(lam, seed) for lam, seed in ((0.0, 5), (1.0, 6))}
    together, errors = {}, []

    def user(lam, seed):
        try:
            together[lam] = call(lam, seed)
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=user, args=a) for a in ((0.0, 5), (1.0, 6))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    for lam in alone:
        assert all(np.array_equal(a, b) for a, b in zip(alone[lam], together[lam], strict=True))

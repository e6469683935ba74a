"""End to end against the real app on localhost: a browser (Debian's Chromium driven by Playwright) and two
`gradio_client` users at once. The app runs with the shipped nano weights, as a user would start it.
Screenshots go to artifacts/ (or $E2E_ARTIFACTS)."""
import os
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
def server(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("app")
    with running_app(["--ratings-db", str(tmp / "ratings.sqlite"), "--max-duration", "4"], tmp) as (url, _, _):
        yield url


@pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="needs Debian's chromium (apt-get install chromium)")
def test_browser_generate_compare_and_rate(server):
    from playwright.sync_api import expect, sync_playwright  # noqa: PLC0415 (optional: the browser test skips without it)

    artifacts = Path(os.environ.get("E2E_ARTIFACTS", ROOT / "artifacts"))
    artifacts.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1440, "height": 900})
        page.goto(server)
        seed_box = page.locator("#seed textarea, #seed input").first

        # what nano hears, as the prompt is typed; its own wording one click away, the user's words one more
        page.locator("#prompt textarea").fill("workout playlist, high energy, 130 bpm")
        expect(page.locator("#heard")).to_contain_text("130 bpm → 120 BPM", timeout=30_000)
        page.locator("#use-nano").click()
        expect(page.locator("#prompt textarea")).to_have_value("120 BPM fast energetic techno, drums", timeout=30_000)
        page.locator("#own-words").click()
        expect(page.locator("#prompt textarea")).to_have_value("workout playlist, high energy, 130 bpm")

        # takes: every press new ones (seed unlocked), the same again once locked
        page.locator("#clips input[type=number]").fill("3")
        page.locator("#clips input[type=number]").press("Enter")
        seeds = []
        for _ in range(2):
            page.locator("#generate").click()
            expect(seed_box).not_to_have_value(seeds[-1] if seeds else "", timeout=120_000)
            expect(page.locator(".merged-clip:visible")).to_have_count(3, timeout=120_000)
            seeds.append(seed_box.input_value())
        assert seeds[0].isdigit() and seeds[1].isdigit() and seeds[0] != seeds[1]
        expect(page.locator("#played")).to_contain_text("What each clip played")
        page.locator("#lock-seed input[type=checkbox]").check()
        before = page.locator("#info").inner_text()  # the same seed: only the timings tell the new takes apart
        page.locator("#generate").click()
        expect(page.locator("#info")).not_to_have_text(before, timeout=120_000)
        expect(page.locator("#files")).to_contain_text(f"seed{seeds[1]}_")
        assert seed_box.input_value() == seeds[1]

        # a refused prompt leaves the takes in place, with the reason beside them
        page.locator("#prompt textarea").fill("x" * 600)
        page.locator("#generate").click()
        expect(page.locator("#message")).to_contain_text("the limit is 500", timeout=60_000)
        expect(page.locator(".merged-clip:visible")).to_have_count(3)
        page.locator("#prompt textarea").fill("calm piano with soft strings")

        # λ typed into its number box re-merges
        page.locator("#lambda input[type=number]").fill("0.8")
        page.locator("#lambda input[type=number]").press("Enter")
        expect(page.locator("#merge-info")).to_contain_text("λ = 0.80", timeout=60_000)

        page.locator("#compare input[type=checkbox]").check()
        page.locator("#generate").click()
        expect(page.locator("#info")).to_contain_text("CFG costs", timeout=120_000)
        expect(page.locator(".base-clip:visible")).to_have_count(3)
        page.screenshot(path=str(artifacts / "e2e-generate.png"), full_page=True)
        page.evaluate("window.scrollTo(0, 0)")
        page.screenshot(path=str(artifacts / "generate-1440x900.png"))

        # blind A/B: vote, reveal, next pair, vote again; the Results table survives every step
        page.get_by_role("tab", name="Blind A/B").click()
        for round_ in range(2):
            page.locator("#new-pair" if round_ == 0 else "#next-pair").click()
            expect(page.locator("#reveal")).to_contain_text("Listen to both sets", timeout=120_000)
            page.locator("#vote-quality").get_by_text("A", exact=True).click()
            page.locator("#vote-diversity").get_by_text("tie", exact=True).click()
            page.locator("#submit-rating").click()
            expect(page.locator("#reveal")).to_contain_text("A was", timeout=60_000)
            expect(page.locator("#submit-rating")).to_be_disabled()  # no second submit of the same pair
        page.evaluate("window.scrollTo(0, 0)")
        page.screenshot(path=str(artifacts / "ab-1440x900.png"))
        page.get_by_role("tab", name="Results").click()
        expect(page.locator("#results")).to_contain_text("quality", timeout=30_000)
        assert "Error" not in page.locator("#results").inner_text()
        page.screenshot(path=str(artifacts / "e2e-results.png"), full_page=True)
        page.evaluate("window.scrollTo(0, 0)")
        page.screenshot(path=str(artifacts / "results-1440x900.png"))
        browser.close()


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

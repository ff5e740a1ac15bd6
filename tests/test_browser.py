"""A real browser: Chromium driven by Playwright against the dashboard as `dpsat dashboard` starts it.

Opens the app from another working directory, runs a tiny comparison (digits, DP-SGD and DP-SAT,
ε = 3, one seed, one epoch), waits for the privacy–utility figure, saves a screenshot and downloads
the figure as PNG. Chromium is found on PATH or through BROWSER_PATH (the README's test command
installs Debian's); without one the test is skipped and says why.
"""

import re

import pytest
from playwright.sync_api import expect, sync_playwright

from dpsat_core.export import find_chromium
from tests.servers import running_dashboard

CHROMIUM = find_chromium()
pytestmark = pytest.mark.skipif(
    CHROMIUM is None, reason="no Chromium on PATH or BROWSER_PATH (Debian: apt-get install chromium)"
)


@pytest.fixture
def server(tmp_path):
    with running_dashboard(tmp_path) as url:
        yield url


@pytest.mark.slow
def test_a_tiny_comparison_in_a_real_browser(server, tmp_path):
    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu", "--disable-background-networking"]
        )
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        console_errors = []
        page.on("console", lambda message: message.type == "error" and console_errors.append(message.text))
        page.goto(server)
        expect(page.get_by_text("Do flat minima help under differential privacy?")).to_be_visible(timeout=60_000)

        page.get_by_role("link", name="Train & sweep").click()
        expect(page.get_by_role("heading", name="Train & sweep")).to_be_visible(timeout=30_000)
        page.get_by_text("DP-SAM", exact=True).click()  # untick: keep DP-SGD and DP-SAT
        for label, value in (
            ("Target ε values (comma-separated)", "3"),
            ("Seeds (comma-separated)", "0"),
            ("Epochs", "1"),
        ):
            field = page.get_by_label(label)
            field.fill(value)
            field.press("Enter")  # commits the value; the click below sends every committed value
            expect(field).to_have_value(value)
        page.get_by_role("button", name="Start training").click()
        expect(page.get_by_text("Started 2 runs")).to_be_visible(timeout=30_000)
        expect(page.get_by_text(re.compile(r"2 runs on digits: DP-SGD, DP-SAT · finished"))).to_be_visible(
            timeout=180_000
        )

        page.get_by_role("link", name="Privacy–utility").click()
        chart = page.locator(".js-plotly-plot").first
        expect(chart).to_be_visible(timeout=60_000)
        expect(page.get_by_text("Test accuracy vs privacy budget").first).to_be_visible(timeout=30_000)
        shot = tmp_path / "privacy_utility.png"
        page.screenshot(path=str(shot), full_page=True)
        page.get_by_role("button", name="Download").first.click()
        with page.expect_download(timeout=60_000) as download:  # the PNG is built by kaleido only on this click
            page.get_by_role("button", name="PNG").first.click()
        png = tmp_path / "figure.png"
        download.value.save_as(png)
        browser.close()
    assert console_errors == []  # e.g. usage statistics sent to the internet fail offline
    assert shot.stat().st_size > 20_000
    assert png.read_bytes().startswith(b"\x89PNG")

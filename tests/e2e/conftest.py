"""Browser fixtures: Debian's Chromium (never a downloaded browser), driven by Playwright, against
a Serve app of our own (`make_app("web")`) so that other tests' data is left alone."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = Path(os.environ.get("ISE_CHROMIUM", "/usr/bin/chromium"))
ARTIFACTS = ROOT / "test-artifacts"
# Headless, and nothing that phones home: the test machines have no internet.
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]  # fmt: skip
# Two shared cores: the first search or upload may wait on a cold model and a busy machine.
TIMEOUT_MS = 60_000

PageFactory = Callable[..., Any]


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    """Remember each phase's outcome on the item, so fixtures can screenshot failures."""
    outcome = yield
    setattr(item, f"rep_{call.when}", outcome.get_result())


@pytest.fixture(scope="session")
def artifacts() -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    return ARTIFACTS


@pytest.fixture(scope="module")
def web_url(make_app: Any) -> Iterator[str]:
    """An app of its own under /web: these tests upload and delete freely. Deleted after the
    module, because each app holds about a gigabyte for as long as it runs."""
    # The duplicate review's library holds heavier edits than the default threshold groups.
    yield make_app("web", {"duplicates.threshold": 0.5})
    make_app.delete("web")


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if not CHROMIUM.exists():
        pytest.fail(
            f"{CHROMIUM} is missing: install Debian's chromium (scripts/system-deps.sh), "
            "set ISE_CHROMIUM, or deselect these tests with -m 'not e2e'"
        )
    from playwright.sync_api import expect, sync_playwright

    expect.set_options(timeout=TIMEOUT_MS)
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture
def open_page(
    browser: Any, web_url: str, artifacts: Path, request: pytest.FixtureRequest
) -> Iterator[PageFactory]:
    """open_page(width=1280, height=900, **context_options) -> a Page on the app, ready to use.

    Uncaught JavaScript errors fail the test; a failed test leaves full-page screenshots in
    test-artifacts/.
    """
    opened: list[tuple[Any, Any]] = []
    js_errors: list[str] = []

    def factory(width: int = 1280, height: int = 900, **options: Any) -> Any:
        context = browser.new_context(viewport={"width": width, "height": height}, **options)
        context.set_default_timeout(TIMEOUT_MS)
        page = context.new_page()
        page.on("pageerror", lambda exc: js_errors.append(str(exc)))
        page.goto(web_url + "/")
        page.wait_for_selector("html[data-ready]")
        opened.append((context, page))
        return page

    yield factory
    report = getattr(request.node, "rep_call", None)
    for i, (context, page) in enumerate(opened):
        if report is not None and report.failed:
            page.screenshot(path=str(artifacts / f"{request.node.name}-failed-{i}.png"),
                            full_page=True)  # fmt: skip
        context.close()
    assert not js_errors, f"uncaught JavaScript errors on the page: {js_errors}"

"""Real Chromium (Debian's ``chromium`` + ``chromedriver``, headless) driven by Selenium 4.

The tests skip, saying why, where either binary is missing; Selenium Manager is never
asked to download a browser or a driver (explicit paths, ``SE_OFFLINE``). Screenshots go
to ``$LANDMARKS_TEST_ARTIFACTS`` or ``var/test-artifacts/browser/``.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from selenium.common.exceptions import StaleElementReferenceException

BASE_DIR = Path(__file__).resolve().parents[2]
BROWSER_CANDIDATES = ("chromium", "chromium-browser", "google-chrome")


def _binaries() -> tuple[str | None, str | None]:
    browser = next((path for name in BROWSER_CANDIDATES if (path := shutil.which(name))), None)
    return browser, shutil.which("chromedriver")


@pytest.fixture(scope="session")
def artifacts_dir() -> Path:
    folder = Path(os.environ.get("LANDMARKS_TEST_ARTIFACTS") or BASE_DIR / "var" / "test-artifacts" / "browser")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@pytest.fixture(scope="session")
def chromium(live_server: object) -> Iterator[object]:
    """One headless Chromium for the session (a new one per test costs ~1 s), quit before
    the live server stops so that no kept-alive request holds a database connection."""
    browser, driver_path = _binaries()
    if browser is None or driver_path is None:
        pytest.skip(
            "Chromium and chromedriver are not installed (apt-get install chromium chromium-driver); "
            f"found browser={browser}, chromedriver={driver_path}"
        )
    os.environ["SE_OFFLINE"] = "true"  # Selenium Manager, if ever reached, must not download
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                     "--window-size=1280,1000", "--lang=en-US"):  # fmt: skip
        options.add_argument(argument)
    driver = webdriver.Chrome(service=Service(executable_path=driver_path), options=options)
    driver.set_page_load_timeout(120)
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture
def browser(chromium: object) -> Iterator[object]:
    """The session's browser, signed out and at desktop size for each test."""
    chromium.execute_cdp_cmd("Network.clearBrowserCookies", {})  # type: ignore[attr-defined]
    chromium.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})  # type: ignore[attr-defined]
    chromium.set_window_size(1280, 1000)  # type: ignore[attr-defined]
    yield chromium
    chromium.get("about:blank")  # type: ignore[attr-defined]


def wait_for(condition: Callable[[], object], *, timeout: float = 60, message: str = "") -> object:
    """Poll ``condition`` until it returns something truthy.

    A page that re-renders while it polls (the jobs page replaces its rows) can detach an
    element between ``find_element`` and reading it; that counts as "not yet"."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            value = condition()
        except StaleElementReferenceException:
            value = None
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s: {message}")
        time.sleep(0.2)


@pytest.fixture(scope="session")
def live_server(django_db_setup: None, live_server: object) -> object:
    """pytest-django's live server, started after the test database is set up so that it
    stops (closing its connections) before the database is dropped."""
    return live_server

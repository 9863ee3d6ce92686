"""A headless Chromium for tests of the dashboard page, and waiting on what the page shows.

``headless_chromium()`` gives a Selenium WebDriver on the Debian packages ``chromium`` and
``chromium-driver`` (``deploy/browser.sh`` installs them; ``make test`` runs it). Selenium is
given both paths, so selenium-manager never runs (it would download a browser: no internet
here). Outside CI a missing browser skips the test; in CI it is a failure, like PostgreSQL in
tests/conftest.py.

``wait_for(driver, predicate, timeout_s)`` polls until ``predicate(driver)`` is truthy: the
page re-renders its tables on every server-sent event, so an element found a moment ago may
be gone (stale) by the next poll; that is retried, not a failure. ``text``/``texts`` read
elements in one script call, which never sees an element half replaced.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

import pytest
from selenium import webdriver
from selenium.common.exceptions import (
    NoSuchElementException,
    StaleElementReferenceException,
    WebDriverException,
)
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.remote.webdriver import WebDriver

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
WINDOW = (1600, 1000)

T = TypeVar("T")


def browser_paths() -> tuple[str, str]:
    """(chromium, chromedriver): skips the test when either is missing, fails it in CI."""
    chromium = shutil.which("chromium") or CHROMIUM
    driver = shutil.which("chromedriver") or CHROMEDRIVER
    missing = [p for p in (chromium, driver) if not os.access(p, os.X_OK)]
    if missing:
        why = f"{' and '.join(missing)} not found (run `bash deploy/browser.sh` as root)"
        if os.environ.get("CI"):
            pytest.fail(f"{why}: in CI the browser tests must run")
        pytest.skip(why)
    return chromium, driver


@contextmanager
def headless_chromium(window: tuple[int, int] = WINDOW) -> Iterator[WebDriver]:
    """A headless Chromium, quit on exit. Its console is kept (``console_errors``)."""
    chromium, driver_path = browser_paths()
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for arg in (
        "--headless=new",
        "--no-sandbox",  # as root Chromium refuses to start without it
        "--disable-dev-shm-usage",  # /dev/shm is small in containers
        f"--window-size={window[0]},{window[1]}",
        "--disable-gpu",
        "--no-first-run",
        "--disable-extensions",
    ):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(driver_path), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def text(driver: WebDriver, selector: str) -> str | None:
    """The text of the first element ``selector`` matches (whitespace trimmed), or None."""
    value = driver.execute_script(
        "const e = document.querySelector(arguments[0]);"
        "return e === null ? null : e.textContent.trim();",
        selector,
    )
    return None if value is None else str(value)


def texts(driver: WebDriver, selector: str) -> list[str]:
    """The texts of every element ``selector`` matches, in document order."""
    values = driver.execute_script(
        "return Array.from(document.querySelectorAll(arguments[0]), e => e.textContent.trim());",
        selector,
    )
    return [str(v) for v in values]


def console_errors(driver: WebDriver) -> list[str]:
    """The browser console's errors since the last call (each entry is returned once)."""
    return [e["message"] for e in driver.get_log("browser") if e.get("level") == "SEVERE"]


def wait_for(
    driver: WebDriver,
    predicate: Callable[[WebDriver], T],
    timeout_s: float = 60.0,
    what: str | None = None,
    poll_s: float = 0.2,
    detail: Callable[[], str] | None = None,
) -> T:
    """``predicate(driver)`` once it is truthy, polled every ``poll_s`` for ``timeout_s``.

    A missing or stale element is retried. On time-out the AssertionError says what was
    awaited, the last result (or error), the console's errors, the page's text and
    ``detail()`` (e.g. the services' logs)."""
    described = what or getattr(predicate, "__name__", repr(predicate))
    deadline = time.monotonic() + timeout_s
    last: Any = None
    while True:
        try:
            value = predicate(driver)
        except (NoSuchElementException, StaleElementReferenceException) as err:
            last = err
        else:
            if value:
                return value
            last = value
        if time.monotonic() >= deadline:
            break
        time.sleep(poll_s)
    raise AssertionError(
        f"timed out after {timeout_s:.0f} s waiting for {described}; last result: {last!r}"
        + _diagnostics(driver)
        + (f"\n{detail()}" if detail else "")
    )


def _diagnostics(driver: WebDriver, chars: int = 3000) -> str:
    try:
        errors = console_errors(driver)
        body = str(driver.execute_script("return document.body ? document.body.innerText : ''"))
        url = driver.current_url
    except WebDriverException as err:  # the browser itself is gone
        return f"\n(the browser does not answer: {err.msg})"
    return (
        f"\npage: {url}"
        + ("\nconsole errors:\n  " + "\n  ".join(errors) if errors else "")
        + f"\npage text (first {chars} characters):\n{body[:chars]}"
    )

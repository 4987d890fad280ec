"""GET /docs in a real browser: headless Chromium (Debian's chromium and chromium-driver, which .ci/run installs),
driven by selenium, opens the page on a live server, sends requests to examples/greeter through it and reads what
it shows; a screenshot of the page with the response is saved as test-artifacts/docs-page.png, its path printed in
the test output. Every wait is on the page's elements (WebDriverWait), never a sleep.

Without chromium or chromedriver the browser tests fail, in CI and elsewhere, so that they are never skipped
unnoticed; set ENGINE_SKIP_BROWSER=1 to skip them instead on a machine without a browser."""
from __future__ import annotations

import json
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.remote.webelement import WebElement
from selenium.webdriver.support import expected_conditions as EC
from selenium.webdriver.support.ui import WebDriverWait

from engine.testing import Server

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[1]
GREETER = REPO / "examples" / "greeter"
ARTIFACTS = REPO / "test-artifacts"  # listed in .gitignore
GREETING = {"greeting": "Hello, Ada!", "signature": "from world!"}
KEY = "docs-page-test-key"
SKIP_ENV = "ENGINE_SKIP_BROWSER"  # set: the browser tests skip when there is no browser, instead of failing
WAIT = 30  # seconds: a bound on each wait for the page, not a pause
WIDTH, HEIGHT = 1280, 1200  # the window
# As root on a machine whose network is closed: no sandbox, and none of Chromium's own connections.
CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--disable-dev-shm-usage", f"--window-size={WIDTH},{HEIGHT}")


@pytest.fixture(scope="module")
def browser(tmp_path_factory) -> WebDriver:
    """Headless Chromium with a fresh profile, shared by the module's tests (each opens its own server's page)."""
    found = {name: shutil.which(name) for name in ("chromium", "chromedriver")}
    if not all(found.values()):
        why = (f"{' and '.join(name for name, path in found.items() if not path)} not found: the /docs browser test "
               "needs Debian's chromium and chromium-driver (apt-get install chromium chromium-driver; .ci/run does)")
        if os.environ.get(SKIP_ENV, "") not in ("", "0"):
            pytest.skip(f"{why}; {SKIP_ENV} is set")
        pytest.fail(f"{why}; or set {SKIP_ENV}=1 to skip this test")
    options = webdriver.ChromeOptions()
    options.binary_location = found["chromium"]
    for flag in (*CHROMIUM_FLAGS, f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=options, service=Service(found["chromedriver"]))  # no Selenium Manager
    yield driver
    driver.quit()


def served_copy(root: Path, *args: str, sample: dict | None = None) -> Server:
    """examples/greeter served from a copy (the server's log goes beside the project), ready."""
    project = root / "greeter"
    shutil.copytree(GREETER, project)
    if sample is not None:
        (project / "sample.json").write_text(json.dumps(sample))
    server = Server(project, *args)
    server.wait_ready()
    return server


@pytest.fixture(scope="module")
def greeter(tmp_path_factory):
    server = served_copy(tmp_path_factory.mktemp("docs"))
    yield server
    assert server.stop() == 0


@dataclass
class Shown:
    """The live response the page shows under an operation."""

    status: str
    body: str
    headers: list[str]


class DocsPage:
    """The /docs page of a server, in the browser."""

    def __init__(self, driver: WebDriver, url: str) -> None:
        self.driver = driver
        self.wait = WebDriverWait(driver, WAIT)
        driver.get_log("browser")  # drop what earlier pages logged
        driver.get(f"{url}/docs")

    def element(self, css: str, condition=EC.element_to_be_clickable) -> WebElement:
        return self.wait.until(condition((By.CSS_SELECTOR, css)))

    def element_at(self, xpath: str) -> WebElement:
        return self.wait.until(EC.element_to_be_clickable((By.XPATH, xpath)))

    def try_out(self, tag: str, operation_id: str) -> str:
        """Open an operation and press "Try it out"; the operation's CSS selector."""
        block = f"#operations-{tag}-{operation_id}"
        self.element(f"{block} .opblock-summary-control").click()
        self.element(f"{block} .try-out__btn").click()
        return block

    def body(self, block: str) -> WebElement:
        return self.element(f"{block} textarea.body-param__text")

    def type_body(self, block: str, text: str) -> None:
        """Replace the request body with `text`, typed as a user types it."""
        area = self.body(block)
        area.send_keys(Keys.CONTROL, "a")
        area.send_keys(text)

    def execute(self, block: str) -> Shown:
        """Press Execute and read the response the page shows (a previous one is cleared first)."""
        live = f"{block} .live-responses-table"
        if self.driver.find_elements(By.CSS_SELECTOR, live):
            self.element(f"{block} .btn-clear").click()
            self.element(live, EC.invisibility_of_element_located)
        self.element(f"{block} .execute").click()
        status = self.element(f"{live} tbody .response-col_status", EC.visibility_of_element_located)
        body = self.element(f"{live} .response-col_description .highlight-code pre", EC.visibility_of_element_located)
        headers = self.driver.find_elements(By.CSS_SELECTOR, f"{live} .response-col_description .headerline")
        return Shown(status.text, body.text, [header.text.strip() for header in headers])

    def authorize(self, field_id: str, key: str) -> None:
        """Enter a key in the Authorize dialog, in the field of one security scheme, and close the dialog."""
        self.element(".auth-wrapper .authorize").click()
        self.element(f"#{field_id}").send_keys(key)
        form = f"//label[@for='{field_id}']/ancestor::form"  # the scheme's form, before and after
        self.element_at(f"{form}//button[@aria-label='Apply credentials']").click()
        self.element_at(f"{form}//button[@aria-label='Remove authorization']")  # Logout: the key is taken
        self.element_at(f"{form}//button[contains(@class, 'btn-done')]").click()
        self.element(".modal-ux", EC.invisibility_of_element_located)

    def errors(self) -> list[str]:
        """What the browser logged as errors since the page opened (a refused asset, a CSP violation, ...)."""
        return [entry["message"] for entry in self.driver.get_log("browser") if entry["level"] == "SEVERE"]

    def screenshot(self, path: Path, down_to: str) -> Path:
        """The page as a PNG, from its top down to the element `down_to` selects."""
        path.parent.mkdir(parents=True, exist_ok=True)
        last = self.element(down_to, EC.visibility_of_element_located).rect
        frame = self.driver.get_window_size()["height"] - self.driver.execute_script("return window.innerHeight")
        self.driver.set_window_size(WIDTH, int(last["y"] + last["height"]) + 24 + frame)
        self.driver.execute_script("window.scrollTo(0, 0)")
        try:
            assert self.driver.save_screenshot(str(path)), f"no screenshot written to {path}"
        finally:
            self.driver.set_window_size(WIDTH, HEIGHT)
        return path


def test_the_page_sends_a_request_to_greeter_and_shows_the_response(browser, greeter, capsys):
    page = DocsPage(browser, greeter.url)
    block = page.try_out("greeter", "greeter_predict")
    page.type_body(block, '{"name": "Ada"}')
    shown = page.execute(block)
    assert shown.status == "200"
    assert json.loads(shown.body) == GREETING
    assert "content-type: application/json" in shown.headers
    assert any(header.startswith("x-request-id: ") for header in shown.headers)
    path = page.screenshot(ARTIFACTS / "docs-page.png", down_to=f"{block} .live-responses-table")
    with capsys.disabled():
        print(f"\nscreenshot of /docs after POST /greeter {{\"name\": \"Ada\"}}: {path}")
    assert page.errors() == []  # every asset loaded from engine, nothing refused by the page's CSP


@pytest.mark.parametrize("field_id", ["auth-bearer-value", "api_key_value"], ids=["bearer", "x-api-key"])
def test_an_api_key_entered_once_in_the_authorize_dialog(browser, tmp_path, field_id):
    server = served_copy(tmp_path, "--api-key", KEY)
    try:
        page = DocsPage(browser, server.url)  # the page and /openapi.json need no key
        block = page.try_out("greeter", "greeter_predict")
        page.type_body(block, '{"name": "Ada"}')
        assert page.execute(block).status == "401"
        page.authorize(field_id, KEY)
        shown = page.execute(block)
        assert (shown.status, json.loads(shown.body)) == ("200", GREETING)
    finally:
        server.close()


def test_the_body_is_prefilled_with_the_projects_sample(browser, tmp_path):
    server = served_copy(tmp_path, sample={"name": "Grace"})
    try:
        page = DocsPage(browser, server.url)
        block = page.try_out("greeter", "greeter_predict")
        assert json.loads(page.body(block).get_attribute("value")) == {"name": "Grace"}
        shown = page.execute(block)
        assert (shown.status, json.loads(shown.body)["greeting"]) == ("200", "Hello, Grace!")
    finally:
        server.close()


def test_the_page_and_its_assets_come_from_engine(greeter):
    page = greeter.client.get("/docs")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "script-src" not in page.headers["content-security-policy"]  # default-src 'self': scripts from here only
    assert "default-src 'self'" in page.headers["content-security-policy"]
    assets = re.findall(r'(?:src|href)="([^"]*)"', page.text)
    assert assets and all(asset.startswith("/docs/") for asset in assets)
    for asset in assets:
        assert greeter.client.get(asset).status_code == 200, asset
    assert greeter.client.get("/docs/swagger-editor-bundle.js").status_code == 404  # only what the page uses


def test_no_docs_turns_the_page_and_the_document_off(tmp_path):
    server = served_copy(tmp_path, "--no-docs")
    try:
        for path in ("/docs", "/docs/init.js", "/docs/swagger-ui-bundle.js", "/openapi.json"):
            response = server.client.get(path)
            assert (response.status_code, response.json()) == (404, {"error": "Not Found"}), path
    finally:
        server.close()

"""The real frontend (comfyui-frontend-package 1.32.9, served by the test server) in Debian's chromium."""
import pathlib

import pytest

from tests.support.host import CHROMIUM
from tests.support.pack import REPO

CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic"]
ARTIFACTS = REPO / "tests" / "artifacts"


@pytest.fixture(scope="session")
def browser():
    if not CHROMIUM.exists():
        pytest.fail("Debian chromium is missing: run `bash scripts/dev-env.sh --ui`", pytrace=False)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        instance = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
        yield instance
        instance.close()


@pytest.fixture
def page(browser, comfy_server):
    """A fresh tab on the ComfyUI page, the graph ready; console errors collected in page.errors."""
    context = browser.new_context(viewport={"width": 1400, "height": 900})
    tab = context.new_page()
    tab.errors = []
    tab.on("pageerror", lambda err: tab.errors.append(str(err)))
    tab.goto(comfy_server.url + "/", wait_until="domcontentloaded")
    tab.wait_for_function("window.app && window.app.graph && window.app.canvas", timeout=60000)
    yield tab
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    context.close()


def artifact(name) -> pathlib.Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    return ARTIFACTS / name

"""The card preview page end to end: the real service under gunicorn, driven by Playwright
through Debian's Chromium (never a downloaded browser).

Skips, saying why, where /usr/bin/chromium or the playwright package is missing. With
KCDS_UPDATE_SCREENSHOT=1 the screenshot is also written to docs/preview.png (the README's
picture); otherwise it goes to the test's temporary folder only, so a test run never changes
the work tree.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from tests.conftest import ROOT, start_gunicorn, stop

pytestmark = pytest.mark.e2e

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
]
SCREENSHOT = ROOT / "docs" / "preview.png"


@pytest.fixture(scope="module")
def browser():
    if not CHROMIUM.exists():
        pytest.skip(f"no browser: {CHROMIUM} is missing (apt-get install chromium)")
    sync_api = pytest.importorskip(
        "playwright.sync_api", reason="the playwright package is not installed"
    )
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture(scope="module")
def service(tmp_path_factory):
    server = start_gunicorn(tmp_path_factory.mktemp("preview"), {"KCDS_PREVIEW": "on"}, workers=1)
    yield server
    stop(server)


@pytest.fixture
def page(browser):
    context = browser.new_context(viewport={"width": 1440, "height": 1350})
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
    yield page
    context.close()
    assert errors == [], f"the page logged errors: {errors}"


def test_pick_a_fixture_send_and_see_the_cards(page, service, tmp_path):
    page.goto(service.url + "/")
    assert page.url.endswith("/preview")
    page.get_by_label("A fixture").check()
    page.get_by_role("combobox", name="Fixture").select_option("r09-bp-185-fires")
    page.get_by_role("button", name="Send").click()

    critical = page.locator("article.card--critical")
    critical.wait_for()
    assert critical.count() == 1
    assert critical.get_attribute("data-rules") == "R09"
    assert "Critical" in critical.locator(".badge").inner_text()
    assert "Blood pressure 185/95 mmHg" in critical.locator("h3").inner_text()
    # the markdown detail is rendered: a list item, bold text, no raw asterisks
    assert critical.locator(".detail li").count() >= 1
    assert "**" not in critical.locator(".detail").inner_text()
    assert page.locator("article.card--info").count() == 1
    assert "Blood pressure rechecked and acceptable" in critical.locator(".reasons").inner_text()
    assert critical.get_by_role("link", name="Rule R09 in the ketamine-cds catalogue").count()

    status = page.get_by_role("status").inner_text()
    assert "ketamine-order-sign" in status and "answered 2 cards" in status
    assert "ms" in page.locator(".elapsed").inner_text()
    assert '"R09"' in page.locator("#response-json").inner_text()

    # a suggestion button shows the exact FHIR resource it would create, keyboard first
    monitoring = page.locator("article.card--info details.suggestion").first
    monitoring.locator("summary").focus()
    page.keyboard.press("Enter")
    resource = monitoring.locator("pre.resource")
    resource.wait_for()
    assert '"resourceType": "ServiceRequest"' in resource.inner_text()

    page.evaluate("window.scrollTo(0, 0)")
    page.screenshot(path=str(tmp_path / "preview.png"), full_page=False)
    if os.environ.get("KCDS_UPDATE_SCREENSHOT") == "1":
        shutil.copyfile(tmp_path / "preview.png", SCREENSHOT)


def test_a_patient_bundle_with_a_dose_gives_cards(page, service):
    from service.tools.fixtures import load

    request, _ = load("r09-bp-185-fires")
    bundle = {
        "resourceType": "Bundle",
        "type": "collection",
        "entry": [
            {"resource": r}
            for key, value in request["prefetch"].items()
            for r in ([value] if key == "patient" else [e["resource"] for e in value["entry"]])
        ],
    }
    import orjson

    page.goto(service.url + "/preview")
    page.get_by_label("A patient Bundle or NDJSON").check()
    page.get_by_label("FHIR R4 Bundle or NDJSON").fill(orjson.dumps(bundle).decode())
    page.get_by_label("Esketamine (Spravato)").check()
    assert page.get_by_label("Dose (mg)").input_value() == "56"
    assert page.get_by_label("Route").is_disabled()
    page.get_by_role("button", name="Send").click()
    page.locator("article.card--critical").wait_for()
    assert page.locator('article[data-rules~="R09"]').count() == 1
    assert '"medicationCodeableConcept"' in page.locator("details pre.json").text_content()


def test_a_fixture_can_be_edited_as_a_hook_request(page, service):
    page.goto(service.url + "/preview")
    assert page.get_by_label("CDS Hooks request (JSON)").is_hidden()  # one source at a time
    page.get_by_role("combobox", name="Fixture").select_option("r08-bp-150-fires")
    page.get_by_role("button", name="Edit it as a hook request").click()
    editor = page.get_by_label("CDS Hooks request (JSON)")
    editor.wait_for()
    assert '"hook": "order-sign"' in editor.input_value()
    assert page.get_by_label("A hook request (JSON)").is_checked()
    page.get_by_role("button", name="Send").press("Enter")  # the keyboard sends it
    warning = page.locator('article[data-rules~="R08"]')
    warning.wait_for()
    assert "card--warning" in warning.get_attribute("class")
    assert page.evaluate("document.activeElement.id") == "results"

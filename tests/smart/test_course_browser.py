"""The SMART EHR launch in a real browser: Playwright drives Debian's Chromium (never a
downloaded browser) from the EHR's launch URL through the loopback authorization server to
the course view, and reads what a clinician would see.

The browser is the preview test's fixture (see conftest.py); it skips, saying why, where
/usr/bin/chromium or the playwright package is missing. With KCDS_UPDATE_SCREENSHOT=1 the
screenshot is also written to docs/course-view.png; otherwise it
goes to the test's temporary folder only, so a test run never changes the work tree.
"""

from __future__ import annotations

import base64
import os
import shutil

import pytest

from tests.conftest import ROOT

from .conftest import AFTER, PATIENT, PHQ9, SESSION_DAYS

pytestmark = pytest.mark.e2e

SCREENSHOT = ROOT / "docs" / "course-view.png"


def rows(page, table: str) -> list[list[str]]:
    return [
        [cell.strip() for cell in row.locator("th, td").all_inner_texts()]
        for row in page.locator(f"#{table} tbody tr").all()
    ]


def test_ehr_launch_authorize_and_see_the_course(page, service, ehr, tmp_path):
    page.goto(f"{service.url}/smart/launch?iss={ehr.fhir}&launch={ehr.launch(PATIENT)}")
    page.wait_for_url(service.url + "/smart/course")
    assert page.title().startswith("Ketamine course · Robin Testcase")

    sessions = rows(page, "sessions-table")
    assert len(sessions) == len(SESSION_DAYS)
    assert sessions[0][2:] == ["ketamine", "Intravenous", "35", "0.50", "J. Okafor, RN"]

    bp = rows(page, "bp-table")
    assert [r[2] for r in bp] == ["126/80 mmHg"] * len(SESSION_DAYS)
    assert bp[0][3] == f"{AFTER[0][0]}/{AFTER[0][1]} mmHg"
    assert bp[4][3:] == ["152/94 mmHg", "at or above the caution threshold"]
    assert bp[-1][3] == "none recorded"

    scores = rows(page, "scores-table")
    assert [r[1] for r in scores] == [str(score) for _, score in PHQ9]  # not the stray one
    assert scores[0][2] == "baseline" and scores[-1][2] == "57% improvement"
    assert "response line 10.5" in page.locator("#scores-table caption").inner_text()

    frequency = rows(page, "frequency-table")
    assert [r[2] for r in frequency] == [str(n) for n in range(1, 9)]

    gaps = page.locator("#gaps").inner_text()
    assert "No post-dose blood pressure for session 8" in gaps

    # the findings are the patient-view cards, in the cards' words
    assert page.locator("#findings article.card").count() >= 1
    assert "8 sessions" in page.locator("#findings").inner_text()

    # every chart is an SVG image with a text equivalent
    for kind in ("sessions", "bp", "scores", "frequency"):
        chart = page.locator(f"#chart-{kind}")
        src = chart.get_attribute("src")
        assert src.startswith("data:image/svg+xml;base64,")
        assert base64.b64decode(src.split(",", 1)[1]).lstrip().startswith(b"<?xml")
        assert b"<svg" in base64.b64decode(src.split(",", 1)[1])
        assert len(chart.get_attribute("alt")) > 40
        assert chart.evaluate("img => img.naturalWidth") > 0  # it decoded and rendered

    page.emulate_media(media="print")
    assert page.locator("main").evaluate("m => getComputedStyle(m).display") == "block"
    page.emulate_media(media="screen")
    page.screenshot(path=str(tmp_path / "course-view.png"), full_page=True)
    if os.environ.get("KCDS_UPDATE_SCREENSHOT") == "1":
        shutil.copyfile(tmp_path / "course-view.png", SCREENSHOT)


def test_a_refusal_is_a_page_in_the_browser(browser, service, ehr):
    context = browser.new_context()
    page = context.new_page()
    response = page.goto(f"{service.url}/smart/launch?iss={ehr.url}/elsewhere&launch=x")
    assert response.status == 403
    assert (
        page.get_by_role("alert").inner_text().startswith("This EHR may not launch the course view")
    )
    context.close()

"""The card preview page (service.web.preview) through Flask's test client."""

from __future__ import annotations

import copy
import io
import re
from html.parser import HTMLParser

import orjson
import pytest

from service.config import ConfigError, Settings
from service.tools.fixtures import load
from service.web.app import create_app
from service.web.preview import preview_enabled, render_markdown, safe_url, view_card

SCRIPT = "<script>alert('card')</script>"


def send(client, **form):
    return client.post("/preview", data=form, content_type="multipart/form-data")


def cards(html: str) -> list[tuple[str, str]]:
    """(indicator, rule ids) of every card on the page."""
    return re.findall(r'class="card card--(\w+)"[^>]*data-rules="([^"]*)"', html)


def elements(html: str) -> list[tuple[str, list[tuple[str, str | None]]]]:
    """Every start tag in ``html`` with its attributes, as a browser would parse them."""
    found: list[tuple[str, list[tuple[str, str | None]]]] = []

    class Collect(HTMLParser):
        def handle_starttag(self, tag, attrs):
            found.append((tag, attrs))

    Collect().feed(html)
    return found


def hrefs(html: str) -> list[str]:
    return [v or "" for _, attrs in elements(html) for k, v in attrs if k == "href"]


def bundle_of(request: dict) -> dict:
    """The fixture's prefetch as one collection Bundle, as a patient export would be."""
    entries = [{"resource": request["prefetch"]["patient"]}]
    for key, value in request["prefetch"].items():
        if key != "patient":
            entries += [{"resource": e["resource"]} for e in value.get("entry") or ()]
    return {"resourceType": "Bundle", "type": "collection", "entry": entries}


def test_the_root_leads_to_the_preview_page(client):
    r = client.get("/")
    assert r.status_code == 302 and r.headers["Location"].endswith("/preview")
    page = client.get("/preview")
    assert page.status_code == 200 and page.mimetype == "text/html"
    html = page.get_data(as_text=True)
    assert 'value="r09-bp-185-fires" selected' in html
    assert html.count("<option value=") >= 128  # every fixture can be picked
    for label in ('for="fixture"', 'for="request_text"', 'for="bundle_text"', 'for="dose"'):
        assert label in html  # every control is labelled


def test_every_asset_ships_in_the_package_and_nothing_comes_from_elsewhere(client):
    html = client.get("/preview").get_data(as_text=True)
    assets = re.findall(r'(?:src|href)="([^"#]+)"', html)
    assert assets and all(a.startswith("/") for a in assets), assets
    for path in ("/preview/static/preview.css", "/preview/static/preview.js"):
        assert client.get(path).status_code == 200
    csp = client.get("/preview").headers["Content-Security-Policy"]
    assert "script-src 'self'" in csp and "default-src 'none'" in csp


def test_a_fixture_shows_its_cards_raw_json_and_time(client):
    r = send(client, source="fixture", fixture="r09-bp-185-fires")
    assert r.status_code == 200
    html = r.get_data(as_text=True)
    assert cards(html) == [("critical", "R09"), ("info", "R38")]
    assert "ketamine-order-sign</strong>" in html and "answered 2 cards" in html
    assert re.search(r'class="elapsed">\d+\.\d ms<', html)
    assert "Would delete</strong> <code>MedicationRequest/draft-ketamine-1</code>" in html
    assert "Would create</strong> <code>ServiceRequest</code>" in html
    assert "&#34;resourceType&#34;: &#34;ServiceRequest&#34;" in html  # the exact resource
    assert "<li>Blood pressure rechecked and acceptable</li>" in html  # R09's own reasons
    assert "<strong>Found in the record</strong>" in html  # markdown rendered server-side
    assert r.headers["Cache-Control"] == "no-store"


def test_the_preview_answers_what_the_service_answers(client):
    request, expected = load("r09-bp-185-fires")
    api = client.post(f"/cds-services/{expected['service']}", json=request).get_json()
    html = send(client, source="request", request_text=orjson.dumps(request).decode()).data
    assert cards(html.decode()) == [
        (c["indicator"], " ".join(c["extension"]["ketamine-cds.rules"])) for c in api["cards"]
    ]


def test_a_fixture_without_prefetch_is_answered_from_the_fixture_it_names(client):
    html = send(client, source="fixture", fixture="clean-iv-ketamine-sign-no-prefetch").data
    assert cards(html.decode()) == [("info", "R38")]


def test_a_patient_bundle_with_drug_and_dose(client):
    request, _ = load("r09-bp-185-fires")
    bundle = orjson.dumps(bundle_of(request)).decode()
    html = send(
        client, source="bundle", bundle_text=bundle, drug="ketamine", dose="35", route="iv",
        minutes="40", hook="order-sign",
    ).get_data(as_text=True)  # fmt: skip
    assert ("critical", "R09") in cards(html)
    assert "&#34;hook&#34;: &#34;order-sign&#34;" in html  # the request built is shown


def test_a_patient_file_upload_and_esketamine(client):
    request, _ = load("r19-esketamine-70-fires")
    upload = (io.BytesIO(orjson.dumps(bundle_of(request))), "patient.json")
    html = send(
        client, source="bundle", bundle_file=upload, drug="esketamine", dose="56",
        hook="order-sign",
    ).get_data(as_text=True)  # fmt: skip
    assert any("R19" in rules.split() for _, rules in cards(html))


def test_input_problems_are_shown_in_the_form(client):
    r = send(client, source="request", request_text="{not json")
    assert r.status_code == 400
    assert "the hook request is not valid JSON" in r.get_data(as_text=True)
    r = send(client, source="bundle", bundle_text='{"resourceType": "Bundle"}', dose="35")
    assert r.status_code == 400 and "no Patient resource" in r.get_data(as_text=True)
    r = send(client, source="fixture", fixture="no-such-fixture")
    assert r.status_code == 400


def test_a_request_the_service_refuses_shows_its_error(client):
    html = send(client, source="request", request_text='{"hook": "order-sign"}').data.decode()
    assert "refused the request: <strong>400 invalid_request</strong>" in html
    assert "hookInstance is required" in html


def test_patient_text_in_a_card_can_never_inject_script(client):
    request, _ = load("r09-bp-185-fires")
    request = copy.deepcopy(request)
    for entry in request["prefetch"]["observations"]["entry"]:
        code = entry["resource"]["code"]
        if code["coding"][0]["code"] == "85354-9":
            code["coding"][0]["display"] = (
                f"{SCRIPT} <img src=x onerror=alert(1)> [click](javascript:alert(1))"
            )
            code["text"] = code["coding"][0]["display"]
    html = send(client, source="request", request_text=orjson.dumps(request).decode()).data
    html = html.decode()
    card = re.search(r'<article class="card card--critical".*?</article>', html, re.S).group(0)
    assert "alert" in card  # the hostile text reached the card…
    tags = elements(card)  # …but only as text: no element, attribute or link from it
    assert not {tag for tag, _ in tags} & {"script", "img", "iframe", "object"}
    assert not [name for _, attrs in tags for name, _ in attrs if name.startswith("on")]
    assert not [h for h in hrefs(card) if not h.startswith(("http://", "https://"))]
    assert html.count("<script") == 1  # the page's own script, nothing else
    assert "&lt;script&gt;" in html  # shown escaped in the raw JSON


def test_markdown_is_rendered_and_sanitised():
    html = str(render_markdown(f"**bold** {SCRIPT}\n\n- item\n\n[x](javascript:alert(1))"))
    assert "<strong>bold</strong>" in html and "<li>item</li>" in html
    assert "<script" not in html and "javascript:" not in " ".join(hrefs(html))
    assert "&lt;script&gt;" in html  # kept as text
    assert 'rel="noopener noreferrer nofollow"' in str(render_markdown("[a](https://x.org)"))


def test_card_links_and_sources_are_only_http():
    card = {
        "summary": "s",
        "indicator": "bogus",
        "detail": SCRIPT,
        "source": {"label": "src", "url": "javascript:alert(1)"},
        "links": [{"label": "l", "url": "javascript:alert(1)", "type": "absolute"}],
    }
    view = view_card(card)
    assert view["indicator"] == "info" and view["source_url"] is None
    assert view["links"][0]["url"] is None and "<script" not in str(view["detail"])
    assert safe_url("https://example.org/x") == "https://example.org/x"
    assert safe_url("data:text/html,hi") is None


def test_fixture_request_json_for_the_editor(client):
    r = client.get("/preview/fixtures/r09-bp-185-fires.json")
    assert r.status_code == 200 and r.get_json()["hook"] == "order-sign"
    assert client.get("/preview/fixtures/nope.json").status_code == 404


def test_the_preview_is_switchable(tmp_path):
    def enabled(**env: str) -> bool:
        return preview_enabled(Settings.from_env({"KCDS_REGISTRY": "off", **env}))

    assert enabled(KCDS_AUTH="off") is True
    assert enabled(KCDS_AUTH="jwt") is False
    assert enabled(KCDS_AUTH="jwt", KCDS_PREVIEW="on") is True
    assert enabled(KCDS_AUTH="off", KCDS_PREVIEW="off") is False
    with pytest.raises(ConfigError, match="KCDS_PREVIEW"):
        enabled(KCDS_AUTH="off", KCDS_PREVIEW="maybe")


def test_with_the_preview_off_its_routes_do_not_exist(tmp_path):
    app = create_app(Settings(auth="off", registry=False, preview=False))
    client = app.test_client()
    assert client.get("/preview").status_code == 404
    assert client.get("/").status_code == 404
    assert client.post("/preview", data={"source": "fixture"}).status_code in (404, 405)

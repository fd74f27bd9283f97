"""The FhirSource seam: the request pipeline driven through the in-process double, and both
implementations held to the protocol. HTTP fetching itself is tested in test_fhir.py."""

from __future__ import annotations

import inspect
import subprocess
import sys

import pytest

from cds_hooks.errors import CDSHooksError
from cds_hooks.fhir import FetchSettings, FhirClient
from cds_hooks.models import Response
from cds_hooks.prefetch import KeyResult
from cds_hooks.service import HookRequest, ServiceDefinition, handle, resolve_prefetch
from cds_hooks.source import FhirSource, MockFhirSource, Read
from service.tools.toolkit import FixtureFhir

SERVER = "https://fhir.example.org/r4"
PATIENT = {"resourceType": "Patient", "id": "1"}


def service(required: frozenset[str] = frozenset()) -> ServiceDefinition:
    return ServiceDefinition(
        "s",
        "patient-view",
        "t",
        "d",
        lambda request: Response(),
        prefetch={
            "patient": "Patient/{{context.patientId}}",
            "conditions": "Condition?patient={{context.patientId}}",
        },
        required_keys=required,
    )


def body(**extra) -> dict:
    return {
        "hook": "patient-view",
        "hookInstance": "d1577c69-dfbe-44ad-ba6d-3e05e953b2ea",
        "context": {"userId": "Practitioner/9", "patientId": "1"},
        **extra,
    }


class Recorder:
    """A responder that answers every key with one resource and remembers what it was asked."""

    def __init__(self) -> None:
        self.reads: list[Read] = []

    def __call__(self, read: Read) -> KeyResult:
        self.reads.append(read)
        return KeyResult("fetched", [PATIENT])


@pytest.mark.parametrize(
    "source",
    [
        FhirClient(FetchSettings()),
        MockFhirSource(lambda read: KeyResult("empty")),
        FixtureFhir({}),
    ],
    ids=["FhirClient", "MockFhirSource", "FixtureFhir"],
)
def test_every_source_implements_the_protocol(source):
    assert isinstance(source, FhirSource)
    for name in ("allows", "complete"):
        expected = inspect.signature(getattr(FhirSource, name))
        actual = inspect.signature(getattr(type(source), name))
        assert list(actual.parameters) == list(expected.parameters), name
    if isinstance(source, FhirClient):
        source.close()


def test_the_pipeline_reads_the_missing_keys_with_the_token_and_filled_templates():
    respond = Recorder()
    token = {"access_token": "tok", "token_type": "Bearer", "expires_in": 300, "scope": "x"}
    request, _ = handle(
        service(),
        body(fhirServer=SERVER, fhirAuthorization={**token, "subject": "s"}),
        MockFhirSource(respond),
        "http://cds",
    )
    assert sorted((r.key, r.url) for r in respond.reads) == [
        ("conditions", "Condition?patient=1"),
        ("patient", "Patient/1"),
    ]
    assert {(r.base, r.token, r.partial) for r in respond.reads} == {(SERVER, "tok", None)}
    assert isinstance(request, HookRequest)
    assert request.prefetch["patient"].resources == [PATIENT]


def test_keys_the_client_sent_are_not_read_and_paged_ones_are_continued():
    respond = Recorder()
    paged = {
        "resourceType": "Bundle",
        "type": "searchset",
        "entry": [{"resource": {"resourceType": "Condition", "id": "a"}}],
        "link": [{"relation": "next", "url": f"{SERVER}/Condition?page=2"}],
    }
    out = resolve_prefetch(
        service(),
        body(fhirServer=SERVER, prefetch={"patient": PATIENT, "conditions": paged}),
        MockFhirSource(respond),
    )
    [read] = respond.reads
    assert (read.key, read.url) == ("conditions", f"{SERVER}/Condition?page=2")
    assert read.partial is not None and read.partial.resources[0]["id"] == "a"
    assert out["patient"].status == "provided" and out["conditions"].status == "fetched"


def test_a_server_the_source_does_not_allow_is_refused_before_any_read():
    respond = Recorder()
    source = MockFhirSource(respond, allows=lambda server: server.startswith("https://ok."))
    with pytest.raises(CDSHooksError) as refused:
        handle(service(), body(fhirServer=SERVER), source, "http://cds")
    assert refused.value.status == 400 and refused.value.field == "fhirServer"
    assert respond.reads == []


def test_a_required_key_the_source_cannot_read_is_a_412_with_its_reason():
    source = MockFhirSource(lambda read: KeyResult("unavailable", reason="server said no"))
    with pytest.raises(CDSHooksError) as refused:
        handle(service(frozenset({"patient"})), body(fhirServer=SERVER), source, "http://cds")
    assert refused.value.status == 412 and refused.value.field == "prefetch.patient"
    assert "server said no" in refused.value.message


def test_without_fhir_server_nothing_is_read():
    respond = Recorder()
    out = resolve_prefetch(service(), body(), MockFhirSource(respond))
    assert respond.reads == []
    assert {r.status for r in out.values()} == {"unavailable"}
    assert "no fhirServer" in out["patient"].reason


def test_the_fixture_double_answers_from_another_fixtures_prefetch():
    conditions = {
        "resourceType": "Bundle",
        "type": "searchset",
        "entry": [{"resource": {"resourceType": "Condition", "id": "c"}}],
    }
    source = FixtureFhir({"conditions": conditions})
    out = source.complete(SERVER, None, {"patient": "Patient/1", "conditions": "C", "x": "X"}, {})
    assert out["patient"].status == "unavailable"
    assert out["conditions"].resources == [{"resourceType": "Condition", "id": "c"}]
    assert out["x"] == KeyResult("fetched", [])


def test_the_pipeline_imports_no_http_client():
    code = "import sys, cds_hooks.service; print({'requests', 'urllib3'} & set(sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "set()"

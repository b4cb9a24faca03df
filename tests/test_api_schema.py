"""The API driven from its own schema (schemathesis): every operation, with generated valid and invalid
requests, by a clinician with a token. No answer may be a 500 or disagree with the schema."""

import pytest
import schemathesis
from django.core.signals import request_finished, request_started
from django.core.wsgi import get_wsgi_application
from django.db import close_old_connections
from hypothesis import HealthCheck, given, settings
from rest_framework.throttling import SimpleRateThrottle
from schemathesis import GenerationMode
from schemathesis.specs.openapi.checks import positive_data_acceptance

from skinweb.api.models import ApiToken
from skinweb.clinic.models import Case, Prediction
from skinweb.models_registry.models import ModelVersion
from skinweb.referrals.models import Practice, Referral
from tests.builders import make_case, make_lesion, make_patient

pytestmark = pytest.mark.django_db

# Every check of schemathesis but one: a request the schema allows may still break a rule that no schema
# states (a patient of another clinic, an identifier already taken, a birth year to come): a 400 with the
# rule's message is the right answer there, not a failure.
RULES = [positive_data_acceptance]
EXAMPLES = 12  # per operation and phase: about 15 s for the whole API on two cores


@pytest.fixture
def records(alice, north):
    """What the operations on one record are also driven against (generated IDs seldom exist): a patient,
    a lesion, a case with a result and feedback; a queued and a failed case; a token to revoke."""
    lesion = make_lesion(make_patient(north, "N-1"))
    version = ModelVersion.objects.create(version="v-api", filename="v.safetensors", arch="vgg16", input_size=64,
                                          threshold=0.5, status=ModelVersion.Status.PUBLISHED)
    case = make_case(lesion, alice)
    prediction = Prediction.objects.create(case=case, model_version=version, probability=0.7, threshold=0.5,
                                           band_low=0.4, band_high=0.6, decision="malignant", elapsed_ms=10,
                                           device="cpu", views=8, differential={"melanoma": 0.6, "nevus": 0.4})
    case.mark_done(prediction)
    case.record_feedback(alice, agrees_with_ai=True, clinical_diagnosis="melanoma", management="excise")
    make_case(lesion, alice)
    make_case(lesion, alice, status=Case.Status.FAILED, failure_reason="test")
    spare = ApiToken.objects.create(alice, name="to revoke")[0]
    practice = Practice.objects.create(name="Riverside", code="RIV")
    practice.clinics.add(north)
    referral = Referral.objects.create(practice=practice, clinic=north, patient_identifier="7", birth_year=1950,
                                       sex="female", site="head/neck", duration_months=3, urgency="urgent",
                                       lesion=make_lesion(make_patient(north, "RIV-7")))
    make_case(referral.lesion, alice)
    return {"patients": lesion.patient_id, "lesions": lesion.pk, "cases": case.pk, "tokens": spare.token_key,
            "referrals": referral.pk}


@pytest.fixture
def token(alice, records, monkeypatch):
    monkeypatch.setattr(SimpleRateThrottle, "THROTTLE_RATES", {"user": "100000/min", "anon": "100000/min"})
    return ApiToken.objects.create(alice, name="schemathesis")[1]


@pytest.fixture
def api_schema(token):
    # Requests go straight to Django's WSGI handler, in this thread and this test's transaction; the handler
    # would close the database connection after each, as Django's test client keeps it from doing.
    for signal in (request_started, request_finished):
        signal.disconnect(close_old_connections)
    headers = {"Authorization": f"Token {token}"}
    yield schemathesis.openapi.from_wsgi("/api/schema/?format=json", get_wsgi_application(), headers=headers)
    for signal in (request_started, request_finished):
        signal.connect(close_old_connections)


def test_the_api_answers_as_its_schema_says(api_schema, token, records):
    """Each operation with valid requests (with generated IDs, then with an existing record's), then with
    invalid ones. (Schemathesis' own pytest
    integration, ``from_fixture``, does not run on pytest 9: it sets a node attribute pytest 9 dropped;
    the operations are driven here with its strategies instead.)"""
    headers = {"Authorization": f"Token {token}"}
    operations = [result.ok() for result in api_schema.get_all_operations()]
    assert len(operations) >= 15
    for operation in operations:
        resource = operation.path.split("/")[3]  # /api/v1/<resource>/{id}/...
        key = "token_key" if resource == "tokens" else "id"
        runs = [(GenerationMode.POSITIVE, None), (GenerationMode.NEGATIVE, None)]
        if "{" in operation.path:
            runs.append((GenerationMode.POSITIVE, {key: records[resource]}))
        for mode, fixed in runs:

            @given(case=operation.as_strategy(generation_mode=mode, path_parameters=fixed))
            @settings(max_examples=EXAMPLES, deadline=None, database=None, derandomize=True,
                      suppress_health_check=list(HealthCheck))
            def run(case):
                case.validate_response(case.call(headers=headers), headers=headers, excluded_checks=RULES)

            run()

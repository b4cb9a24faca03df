"""French and German (issue 46): complete catalogues that are up to date with the code, the language chosen per
user (else the browser's, else LANGUAGE_CODE), pages, the PDF report, messages and e-mails in it, dates and
decimals localised, and no English left on a clinician's pages or report."""

import html
import io
import re

import pytest
from django.core import mail
from django.core.management import call_command
from django.urls import reverse
from django.utils import translation
from pypdf import PdfReader

from skinweb.accounts.management.commands import catalogues
from skinweb.clinic import classification
from skinweb.clinic.models import Case, Prediction
from skinweb.referrals import notify
from tests.builders import make_case, make_lesion, make_patient, make_user, upload

# Words of English a page in French or German must not contain (none of them is a French or German word).
ENGLISH = {
    "the", "and", "with", "your", "of", "to", "is", "not", "for", "upload", "uploaded", "result", "results",
    "threshold", "decision", "benign", "malignant", "probability", "feedback", "save", "back", "new", "lesion",
    "lesions", "log", "out", "yes", "none", "waiting", "review", "home", "cases", "case", "model", "history", "show",
    "heat", "map", "taken", "borderline", "agree", "agrees", "clinic", "clinician", "report", "download", "by",
    "from", "this", "that", "it", "be", "at", "site", "sex", "female", "male", "birth", "year", "nevus",
    "management", "diagnosis", "notes", "filter", "search", "account", "security", "language", "password",
    "remove", "move", "flag", "why", "what", "when", "who", "technical", "only", "any", "all",
    "open", "close", "record", "correct", "band", "shown", "similar", "differential", "queued", "running", "done",
    "failed", "check", "older", "newer", "referrals", "referral", "practice", "practices",
}
WORD = re.compile(r"[^\W\d_]+", re.UNICODE)
VISIBLE_ATTRIBUTES = re.compile(r'\s(?:title|alt|aria-label|placeholder)="([^"]*)"')


def visible_words(page: str, own_data: list[str]) -> set[str]:
    """The words a reader sees on a page (text and the attributes read aloud or shown on hover), less the
    records' own data (identifiers, file names, user and clinic names, which no catalogue translates)."""
    page = re.sub(r"<(script|style)\b.*?</\1>", " ", page, flags=re.S | re.I)
    page = re.sub(r'<option value="[^"]*"[^>]*lang="(?!fr|de)[^"]*"[^>]*>[^<]*</option>', " ", page)
    text = " ".join([re.sub(r"<[^>]+>", " ", page), *VISIBLE_ATTRIBUTES.findall(page)])
    text = html.unescape(text)
    for data in own_data:
        text = text.replace(data, " ")
    return {w.lower() for w in WORD.findall(text)}


def test_the_catalogues_are_complete_and_up_to_date_with_the_code():
    """makemessages changes nothing, and every entry of each catalogue has a translation that is not fuzzy."""
    call_command("catalogues", check=True)


def test_the_check_finds_an_untranslated_and_a_fuzzy_entry():
    text = ('msgid ""\nmsgstr ""\n"Content-Type: text/plain; charset=UTF-8\\n"\n\n'
            'msgid "Done"\nmsgstr ""\n\n#, fuzzy\nmsgid "Open"\nmsgstr "Offen"\n\n'
            'msgid "%(n)s image"\nmsgid_plural "%(n)s images"\nmsgstr[0] "%(n)s image"\nmsgstr[1] ""\n')
    assert catalogues.problems(text) == ["untranslated: 'Done'", "fuzzy: 'Open'", "untranslated: '%(n)s image'"]


@pytest.fixture
def classified(alice, published_model):
    """A classified case of alice's clinic with feedback: the pages a clinician reads every day."""
    patient = make_patient(alice.clinic, "FR-001", birth_year=1961)
    case = make_case(make_lesion(patient, site="upper extremity"), alice)
    classification.classify_case(case.pk)
    Prediction.objects.filter(case=case).update(probability=0.8731)
    case = Case.objects.get(pk=case.pk)
    return case


def own_data(case, user):
    return [case.original_name, case.lesion.patient.identifier, user.username, str(user.clinic),
            case.prediction.model_version.version, case.sha256[:16]]


@pytest.mark.parametrize("language", ["fr", "de"])
def test_a_clinician_s_pages_and_report_have_no_english(client, alice, classified, language):
    alice.language = language
    alice.save()
    case = classified
    response = client.post(reverse("clinic:case_feedback", args=[case.pk]), {
        "agrees_with_ai": "yes", "clinical_diagnosis": "nevus", "management": "monitor", "notes": ""}, follow=True)
    assert response.status_code == 200 and response["Content-Language"] == language
    pages = {"after feedback": response.content.decode()}
    for name, args in [("clinic:dashboard", []), ("clinic:case_list", []), ("clinic:case_detail", [case.pk]),
                       ("clinic:patient_detail", [case.lesion.patient.pk]), ("clinic:lesion_detail", [case.lesion.pk]),
                       ("clinic:patient_list", []), ("clinic:patient_create", []), ("account_security", [])]:
        page = client.get(reverse(name, args=args))
        assert page.status_code == 200, name
        pages[name] = page.content.decode()
    for name, page in pages.items():
        english = visible_words(page, own_data(case, alice)) & ENGLISH
        assert not english, f"{name} in {language}: {sorted(english)}"
    pdf = client.get(reverse("clinic:case_report", args=[case.pk]))
    text = " ".join(PdfReader(io.BytesIO(pdf.content)).pages[0].extract_text().split())
    english = visible_words(text, own_data(case, alice)) & ENGLISH
    assert not english, f"PDF in {language}: {sorted(english)}"


def test_dates_and_decimals_follow_the_language(client, alice, classified):
    case = classified
    taken = case.taken_at
    for language, decimal, date in [("en", "0.873", taken.strftime("%Y-%m-%d")),
                                    ("fr", "0,873", taken.strftime("%d/%m/%Y")),
                                    ("de", "0,873", taken.strftime("%d.%m.%Y"))]:
        alice.language = language
        alice.save()
        page = client.get(reverse("clinic:case_detail", args=[case.pk])).content.decode()
        assert f'data-testid="probability">{decimal}<' in page and date in page, language
        pdf = client.get(reverse("clinic:case_report", args=[case.pk]))
        text = " ".join(PdfReader(io.BytesIO(pdf.content)).pages[0].extract_text().split())
        assert decimal in text and date in text, language


def test_the_language_is_the_user_s_choice_else_the_browser_s_else_the_installation_s(client, alice, settings):
    def home(**headers):
        response = client.get(reverse("clinic:dashboard"), **headers)
        return response["Content-Language"], response.content.decode()

    assert home()[0] == "en"
    assert home(HTTP_ACCEPT_LANGUAGE="de-DE,de;q=0.9")[0] == "de"
    response = client.post(reverse("account_security"), {"action": "language", "language": "fr"}, follow=True)
    assert "Votre langue est enregistrée." in response.content.decode()
    alice.refresh_from_db()
    assert alice.language == "fr"
    language, page = home(HTTP_ACCEPT_LANGUAGE="de-DE,de;q=0.9")
    assert language == "fr" and "Accueil" in page and "Cas en attente de votre examen" in page
    client.post(reverse("account_security"), {"action": "language", "language": ""})
    assert home(HTTP_ACCEPT_LANGUAGE="de")[0] == "de"
    # A language the site does not have changes nothing.
    response = client.post(reverse("account_security"), {"action": "language", "language": "xx"})
    alice.refresh_from_db()
    assert alice.language == "" and response.status_code == 302


def test_the_installation_language_comes_from_the_environment():
    import subprocess
    import sys

    code = "import django; django.setup(); from django.conf import settings; print(settings.LANGUAGE_CODE)"
    env = {"DJANGO_SETTINGS_MODULE": "skinweb.settings", "PATH": "/usr/bin:/bin"}
    out = subprocess.run([sys.executable, "-c", code], env={**env, "LANGUAGE_CODE": "de"}, capture_output=True,
                         text=True, check=True)
    assert out.stdout.strip().splitlines()[-1] == "de"
    refused = subprocess.run([sys.executable, "-c", code], env={**env, "LANGUAGE_CODE": "es"}, capture_output=True,
                             text=True)
    assert refused.returncode != 0 and "LANGUAGE_CODE='es'" in refused.stderr


def test_messages_and_form_errors_are_in_the_user_s_language(client, alice, published_model):
    alice.language = "de"
    alice.save()
    response = client.post(reverse("clinic:patient_create"), {"identifier": "DE-1", "birth_year": "1850",
                                                               "sex": "female"})
    assert "Geben Sie ein Jahr zwischen 1900 und" in response.content.decode()
    response = client.post(reverse("clinic:patient_create"), {"identifier": "DE-1", "birth_year": "1950",
                                                               "sex": "female"}, follow=True)
    assert "Patient DE-1 angelegt. Fügen Sie jetzt eine Läsion hinzu." in response.content.decode()
    lesion = make_lesion(make_patient(alice.clinic, "DE-2"))
    response = client.post(reverse("clinic:lesion_upload", args=[lesion.pk]),
                           {"images": [upload("notes.jpg", data=b"not an image")]}, HTTP_ACCEPT="application/json")
    assert "Dies ist kein lesbares JPEG- oder PNG-Bild" in response.content.decode()


def test_e_mails_are_written_in_each_recipient_s_language(alice, django_capture_on_commit_callbacks, settings):
    from skinweb.referrals.models import Practice, Referral

    settings.EMAIL_BACKEND = "django.core.mail.backends.locmem.EmailBackend"
    alice.email, alice.language = "alice@north.example", "fr"
    alice.save()
    dora = make_user("dora", alice.clinic)
    dora.email, dora.language = "dora@north.example", "de"
    dora.save()
    practice = Practice.objects.create(name="Cabinet", code="cab")
    referral = Referral(pk=7, practice=practice, clinic=alice.clinic)
    with django_capture_on_commit_callbacks(execute=True):
        notify.referral_arrived(referral)
    subjects = {m.to[0]: m.subject for m in mail.outbox}
    assert subjects == {"alice@north.example": "Un nouvel adressage attend d'être examiné",
                        "dora@north.example": "Eine neue Überweisung wartet auf Prüfung"}


def test_stored_warnings_and_failures_are_shown_in_the_reader_s_language():
    from skinweb.clinic import imagechecks
    from skinweb.clinic.models import FAILURES, failure_in_words

    with translation.override("fr"):
        assert imagechecks.in_words(imagechecks.SMALL.format(side=120, min_side=224)) == (
            "petite image (120 px sur son petit côté ; le modèle lit 224 px)")
        assert imagechecks.in_words(f"{imagechecks.UNIFORM}; {imagechecks.UNLIKE_LESION}") == (
            "presque uniforme : aucune lésion visible; ne ressemble pas à une image dermoscopique d'une lésion cutanée")
        assert failure_in_words(FAILURES["classify"] % {"detail": "RuntimeError: boom"}) == (
            "La classification a échoué (RuntimeError: boom).")
        assert failure_in_words("something else") == "something else"


@pytest.mark.parametrize("language", ["fr", "de"])
def test_administrators_pages_have_no_english(client, carol, root, classified, language):
    version = classified.prediction.model_version
    for user, names in [
        (carol, [("clinic:relabel_queue", []), ("clinic:removed_list", []), ("referrals:practices", []),
                 ("referrals:triage", []), ("api_tokens", []), ("clinic:dicom_import", [])]),
        (root, [("manage:model_list", []), ("manage:model_detail", [version.pk]), ("clinic:dashboard", [])]),
    ]:
        user.language = language
        user.save()
        client.force_login(user)
        for name, args in names:
            page = client.get(reverse(name, args=args))
            assert page.status_code == 200, name
            own = [user.username, str(user.clinic), version.version, version.filename, version.sha256 or "-"]
            english = visible_words(page.content.decode(), own) & ENGLISH
            assert not english, f"{name} in {language}: {sorted(english)}"

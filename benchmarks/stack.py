"""End-to-end benchmark through the running stack: gunicorn → Redis → Celery worker → database.

    python -m benchmarks.stack [--uploads 200] [--single 20] [--history-cases 10000] [--json]

Everything runs on loopback in a temporary folder (its own SQLite database, media, Redis), so
your data is never touched. It measures, over HTTP as a browser would:

0. with ``--during-build N``: N single uploads right after the model is published, while a low-priority
   worker builds its fast path (the first minutes of a fresh ``make run``; the first one also loads the model);
1. single uploads with an idle worker: upload → result visible on the case's status panel;
2. a burst of N uploads from several concurrent clients: time from upload to result per case
   (p50/p95/max) and throughput;
3. the case-history page with 10,000 cases: latency p50/p95 and its SQL query count on the first
   and last page and at a tenth of the cases (constant when there is no N+1 query).
"""

import argparse
import http.cookiejar
import json
import os
import re
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from skinweb.launcher import STOP_AT_ONCE, Processes, free_port, redis_command, worker_command

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "tests" / "fixtures" / "isic" / "images"


def pct(values, q):
    values = sorted(values)
    if not values:
        return float("nan")
    k = min(len(values) - 1, max(0, round(q / 100 * (len(values) - 1))))
    return values[k]


class Browser:
    """A logged-in HTTP client with its own cookies (one per simulated clinician)."""

    def __init__(self, base):
        self.base = base
        self.jar = http.cookiejar.CookieJar()
        self.opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(self.jar))

    def csrf(self):
        return next(c.value for c in self.jar if c.name == "csrftoken")

    def get(self, path):
        with self.opener.open(self.base + path, timeout=60) as r:
            return r.status, r.read()

    def post(self, path, fields=None, files=()):
        boundary = uuid.uuid4().hex
        body = bytearray()
        for name, value in {"csrfmiddlewaretoken": self.csrf(), **(fields or {})}.items():
            body += f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode()
        for name, filename, data in files:
            body += (f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"; filename="{filename}"\r\n'
                     f"Content-Type: image/jpeg\r\n\r\n").encode() + data + b"\r\n"
        body += f"--{boundary}--\r\n".encode()
        req = urllib.request.Request(self.base + path, data=bytes(body), method="POST", headers={
            "Content-Type": f"multipart/form-data; boundary={boundary}", "Referer": self.base + path})
        with self.opener.open(req, timeout=120) as r:
            return r.status, r.geturl(), r.read()

    def login(self, username, password):
        self.get("/accounts/login/")
        status, url, _ = self.post("/accounts/login/", {"username": username, "password": password})
        if "/accounts/login/" in url:
            raise RuntimeError("login failed")


class Stack:
    """The stack as production runs it (gunicorn, Redis, two Celery workers), started by skinweb.launcher."""

    def __init__(self, workdir: Path, model: Path | None, database_url: str = "", operating_point: str = ""):
        self.workdir = workdir
        self.redis_port, self.web_port = free_port(), free_port()
        self.env = {
            **os.environ,
            "DJANGO_SETTINGS_MODULE": "skinweb.settings",
            "SKINWEB_VAR_DIR": str(workdir),
            "DATABASE_URL": database_url,
            "SQLITE_PATH": str(workdir / "bench.sqlite3"),
            "REDIS_URL": f"redis://127.0.0.1:{self.redis_port}/0",
            "SECRET_KEY": secrets.token_urlsafe(50),
            "DEBUG": "0",
            "ALLOWED_HOSTS": "127.0.0.1",
            "INFERENCE_DEVICE": "cpu",
            "LOG_LEVEL": "WARNING",
        }
        self.model, self.operating_point = model, operating_point
        self.processes = Processes(self.env, log_dir=workdir)

    def run(self, *args):
        subprocess.run([sys.executable, "manage.py", *args], cwd=ROOT, env=self.env, check=True,
                       stdout=subprocess.DEVNULL)

    def up(self):
        self.run("migrate", "--noinput")
        self.run("collectstatic", "--noinput")
        self.processes.start("redis", redis_command(self.redis_port, self.workdir), ready_port=self.redis_port)
        self.processes.start("worker", worker_command("inference,default", "bench-worker@%h"))
        # The builds of the fast path and the reference library: their own low-priority worker, as `make run` has.
        self.processes.start("builder", worker_command("builds", "bench-builder@%h", nice=19), env=STOP_AT_ONCE)
        if self.model:
            self.run("publish_model", str(self.model),
                     *(["--operating-point", self.operating_point] if self.operating_point else []))
        # Heat maps in their own process at a lower CPU priority, as `make run` does.
        self.processes.start("explainer", worker_command("explain", "bench-explainer@%h", nice=10))
        self.processes.start("web", [sys.executable, "-m", "gunicorn", "skinweb.wsgi:application", "--bind",
                                     f"127.0.0.1:{self.web_port}", "--workers", "2", "--timeout", "120"],
                             ready_port=self.web_port)
        return f"http://127.0.0.1:{self.web_port}"

    def worker_peak_rss_mb(self, name="worker") -> dict:
        """Peak resident memory (VmHWM) of a worker's processes: the main one and its pool child."""
        return self.processes.memory_mb(name)

    def down(self):
        self.processes.stop_all()


def setup_django(env):
    os.environ.update(env)
    import django

    django.setup()


def wait_fast_path(timeout):
    """The published version once its fast-path build has ended (built or failed), or at ``timeout``."""
    from skinweb.models_registry.models import ModelVersion

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = ModelVersion.objects.published()
        if v is None or v.fast_path.get("built") or v.fast_path.get("error"):
            return v
        time.sleep(1)
    return ModelVersion.objects.published()


def newest_case_id():
    from skinweb.clinic.models import Case

    return Case.objects.order_by("-pk").values_list("pk", flat=True).first()


def runtimes_after(case_id) -> dict[str, int]:
    """{runtime: results} of the cases after ``case_id``: what the worker really ran for them."""
    from collections import Counter

    from skinweb.clinic.models import Prediction

    return dict(Counter(Prediction.objects.filter(case__pk__gt=case_id or 0).values_list("runtime", flat=True)))


def browser_for(base):
    browser = Browser(base)
    browser.login("bench", "bench-password")
    return browser


def measure_single(browser, lesion_id, images, n):
    """Upload one image at a time with an idle worker; poll the status panel every 20 ms."""
    times = []
    for i in range(n):
        data = images[i % len(images)]
        t0 = time.perf_counter()
        _, url, _ = browser.post(f"/lesions/{lesion_id}/upload/", files=[("images", f"single-{i}.jpg", data)])
        case_id = int(re.search(r"/cases/(\d+)/", url).group(1))
        while True:
            _, body = browser.get(f"/cases/{case_id}/status/")
            if b"hx-trigger" not in body:  # the panel stops polling once the case is done or failed
                break
            time.sleep(0.02)
        times.append(time.perf_counter() - t0)
    return times


def measure_burst(base, lesion_id, images, n, clients):
    from skinweb.clinic.models import Case

    browsers = []
    for _ in range(clients):
        b = Browser(base)
        b.login("bench", "bench-password")
        browsers.append(b)
    first = newest_case_id() or 0
    errors = []

    def one(i):
        try:
            status, _, _ = browsers[i % clients].post(
                f"/lesions/{lesion_id}/upload/", files=[("images", f"burst-{i}.jpg", images[i % len(images)])])
        except Exception as exc:  # counted and reported, never hidden
            errors.append(repr(exc))

    t0 = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(one, range(n)))
    submitted = time.perf_counter() - t0
    deadline = time.monotonic() + 1800
    while time.monotonic() < deadline:
        pending = Case.objects.filter(pk__gt=first).exclude(status__in=["done", "failed"]).count()
        if pending == 0:
            break
        time.sleep(0.2)
    cases = list(Case.objects.filter(pk__gt=first).select_related("prediction"))
    latencies = [(c.finished_at - c.created_at).total_seconds() for c in cases if c.finished_at]
    span = (max(c.finished_at for c in cases) - min(c.created_at for c in cases)).total_seconds()
    sizes = [c.prediction.batch_size for c in cases if c.prediction]
    return {
        "uploads": n, "clients": clients, "http_errors": len(errors), "cases": len(cases),
        "done": sum(c.status == "done" for c in cases), "failed": sum(c.status == "failed" for c in cases),
        "submit_seconds": submitted, "p50_s": pct(latencies, 50), "p95_s": pct(latencies, 95),
        "max_s": max(latencies), "throughput_img_s": len(cases) / span,
        "forward_passes": round(sum(1 / s for s in sizes)), "mean_batch": statistics.mean(sizes),
    }


def fill_history(lesion, user, total):
    """Bulk-insert cases (with predictions and feedback) until the clinic has ``total``."""
    from django.utils import timezone

    from skinweb.clinic.models import Case, Feedback, Prediction
    from skinweb.models_registry.models import ModelVersion

    version = ModelVersion.objects.published()
    template = Case.objects.filter(lesion=lesion).first()
    have = Case.objects.count()
    now = timezone.now()
    batch = []
    for i in range(max(0, total - have)):
        batch.append(
            Case(
                lesion=lesion,
                clinic_id=lesion.patient.clinic_id,
                created_by=user,
                image=template.image.name,
                original_name=f"h{i}.jpg",
                sha256=template.sha256,
                width=template.width,
                height=template.height,
                status="done",
                created_at=now,
                finished_at=now,
            )
        )
    created = Case.objects.bulk_create(batch, batch_size=1000)
    if version:
        preds = Prediction.objects.bulk_create([
            Prediction(case=c, model_version=version, probability=(i % 100) / 100, threshold=version.threshold,
                       decision="malignant" if (i % 100) / 100 >= version.threshold else "benign",
                       elapsed_ms=10, device="cpu") for i, c in enumerate(created)], batch_size=1000)
        for c, p in zip(created, preds):
            c.prediction = p
        Case.objects.bulk_update(created, ["prediction"], batch_size=1000)
    fbs = Feedback.objects.bulk_create([Feedback(case=c, revision=1, created_by=user, agrees_with_ai=i % 3 != 0,
                                                 clinical_diagnosis="nevus", management="monitor")
                                        for i, c in enumerate(created[::2])], batch_size=1000)
    for f in fbs:
        f.case.feedback = f
    Case.objects.bulk_update([f.case for f in fbs], ["feedback"], batch_size=1000)
    return Case.objects.count()


def measure_page(browser, user, n_requests, path, filtered_query):
    """Latency of a page (p50/p95 over HTTP) and its SQL query count on the first page, the last
    page and a filtered page (measured in this process with Django's test client)."""
    from django.db import connection
    from django.test import Client
    from django.test.utils import CaptureQueriesContext

    from skinweb.clinic.models import Case

    for _ in range(3):
        browser.get(path)  # warm-up
    times = []
    for _ in range(n_requests):
        t0 = time.perf_counter()
        status, _ = browser.get(path)
        times.append(time.perf_counter() - t0)
        if status != 200:
            raise RuntimeError(f"{path} answered {status}")
    client = Client(HTTP_HOST="127.0.0.1")
    client.force_login(user)
    client.get(path)  # the first request after login writes the session: not the page's own queries
    last_page = (Case.objects.count() + 24) // 25
    queries = {}
    for label, url in (("first page", path), ("last page", f"{path}?page={last_page}"),
                       ("filtered", f"{path}?{filtered_query}")):
        with CaptureQueriesContext(connection) as ctx:
            if client.get(url).status_code != 200:
                raise RuntimeError(f"{url} did not answer 200")
        queries[label] = len(ctx.captured_queries)
    return {"p50_ms": pct(times, 50) * 1000, "p95_ms": pct(times, 95) * 1000, "requests": n_requests,
            "queries": queries}


def wait_heatmaps(lesion_id, timeout=600) -> dict:
    """Seconds until every prediction of the lesion has its heat map (computed after the results)."""
    from skinweb.clinic.models import Prediction

    start = time.monotonic()
    predictions = Prediction.objects.filter(case__lesion_id=lesion_id)
    while time.monotonic() - start < timeout:
        pending = predictions.filter(heatmap="", explanation_error="").count()
        if pending == 0:
            break
        time.sleep(0.5)
    return {
        "done": predictions.exclude(heatmap="").count(),
        "failed": predictions.exclude(explanation_error="").count(),
        "after_burst_s": time.monotonic() - start,
    }


def measure_history(browser, user, n_requests):
    return measure_page(browser, user, n_requests, "/cases/", "status=done")


def measure_dashboard(browser, user, n_requests):
    """The clinic home page: its agreement table aggregates every case of the clinic."""
    return measure_page(browser, user, n_requests, "/", "page=1")


def get_args_parser():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--uploads", type=int, default=200, help="uploads in the burst")
    p.add_argument("--clients", type=int, default=8, help="concurrent clinicians uploading in the burst")
    p.add_argument("--single", type=int, default=20, help="single uploads, one after another")
    p.add_argument("--history-cases", type=int, default=10_000)
    p.add_argument("--history-requests", type=int, default=50)
    p.add_argument("--model", default=str(ROOT / "classifier" / "models" / "starter.safetensors"))
    p.add_argument("--operating-point", default=None,
                   help="an operating point file for --model (default: the shipped one with the shipped starter)")
    p.add_argument("--build-timeout", type=float, default=3600,
                   help="seconds to wait for the fast-path build before the uploads after it (default 3600)")
    p.add_argument("--during-build", type=int, default=0, metavar="N",
                   help="first, N single uploads while the fast path is being built (a fresh make run's first minutes)")
    p.add_argument("--images", default=str(FIXTURES), help="folder of JPEG images to upload")
    p.add_argument("--json", action="store_true")
    p.add_argument("--keep", action="store_true", help="keep the temporary folder (logs, database)")
    p.add_argument("--database-url", default="", help="an empty PostgreSQL database to run on (postgres://…); "
                   "default: SQLite in the temporary folder")
    return p


def main(args) -> int:
    images = [p.read_bytes() for p in sorted(Path(args.images).glob("*.jp*g"))]
    if not images:
        print(f"error: no JPEG images in {args.images}", file=sys.stderr)
        return 2
    model = Path(args.model)
    if not model.is_file():
        print(f"error: no model file {model}", file=sys.stderr)
        return 2
    op = args.operating_point
    if op is None:
        shipped = ROOT / "classifier" / "models" / "starter.safetensors"
        op = str(shipped.with_suffix(".operating-point.json")) if model.resolve() == shipped.resolve() else ""
    workdir = Path(tempfile.mkdtemp(prefix="skinweb-bench-"))
    stack = Stack(workdir, model, args.database_url, op)
    result = {}
    try:
        log = lambda msg: print(msg, file=sys.stderr, flush=True)  # noqa: E731
        log(f"starting the stack in {workdir} …")
        base = stack.up()
        setup_django(stack.env)
        from skinweb.accounts.models import Clinic, User
        from skinweb.clinic.models import Lesion, Patient

        clinic = Clinic.objects.create(name="Bench clinic")
        user = User.objects.create_user("bench", password="bench-password", clinic=clinic)
        patient = Patient.objects.create(clinic=clinic, identifier="BENCH-1", birth_year=1970, sex="female")
        lesion = Lesion.objects.create(patient=patient, site="posterior torso")
        if args.during_build:
            from skinweb.models_registry.models import ModelVersion

            log(f"{args.during_build} single uploads while the fast path is being built …")
            started = time.perf_counter()
            during = measure_single(browser_for(base), lesion.pk, images, args.during_build)
            state = ModelVersion.objects.published().fast_path
            result["during_build"] = {"n": len(during), "first_s": during[0], "p50_s": pct(during, 50),
                                      "p95_s": pct(during, 95), "max_s": max(during),
                                      "seconds": round(time.perf_counter() - started, 1),
                                      "build_still_running_at_end": "building_since" in state,
                                      "runtimes": runtimes_after(None)}
        log("waiting for the builder to build the model's fast path …")
        waited = time.perf_counter()
        version = wait_fast_path(args.build_timeout)
        # Only a build that ended makes the next uploads "after the build"; the benchmark says which it was.
        result["build"] = {"ended": not version.fast_path.get("building_since"),
                           "built": bool(version.fast_path.get("built")), "error": version.fast_path.get("error"),
                           "waited_s": round(time.perf_counter() - waited, 1)}
        result["database"] = "postgresql" if args.database_url else "sqlite"
        result["model_version"] = version.version
        result["build_chose"] = (version.fast_report or {}).get("chosen")  # on the builder's CPU
        browser = browser_for(base)

        log(f"{args.single} single uploads …")
        measure_single(browser, lesion.pk, images, 2)  # the worker loads the model
        before = newest_case_id()
        single = measure_single(browser, lesion.pk, images, args.single)
        result["single_upload"] = {"n": len(single), "p50_s": pct(single, 50), "p95_s": pct(single, 95),
                                   "max_s": max(single), "runtimes": runtimes_after(before)}
        log(f"burst of {args.uploads} uploads from {args.clients} clients …")
        result["burst"] = measure_burst(base, lesion.pk, images, args.uploads, args.clients)
        result["worker_peak_rss_mb"] = stack.worker_peak_rss_mb()
        log("waiting for the burst's heat maps …")
        result["heatmaps"] = wait_heatmaps(lesion.pk)
        result["explainer_peak_rss_mb"] = stack.worker_peak_rss_mb("explainer")
        log(f"history page at {args.history_cases} cases …")
        result["history"] = {"cases": fill_history(lesion, user, args.history_cases),
                              **measure_history(browser, user, args.history_requests)}
        result["dashboard"] = measure_dashboard(browser, user, args.history_requests)
    finally:
        stack.down()
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    if args.json:
        print(json.dumps(result))
        return 0
    s, b, h = result["single_upload"], result["burst"], result["history"]
    def ran(runtimes):
        return ", ".join(f"{name} {n}" for name, n in runtimes.items()) or "none recorded"

    build = result["build"]
    print(f"model {result['model_version']}; fast-path build "
          + ("ended" if build["ended"] else "STILL RUNNING")
          + f" {build['waited_s']:.0f} s after the uploads during it (built: {build['built']}; error: "
            f"{build['error'] or 'none'}); its choice on the builder's CPU: {result['build_chose']}")
    if "during_build" in result:
        d = result["during_build"]
        print(f"single uploads while the fast path was being built ({d['n']}, the first loads the model; build still "
              f"running at the end: {d['build_still_running_at_end']}; ran on {ran(d['runtimes'])}): first "
              f"{d['first_s']:.2f} s, p50 {d['p50_s']:.2f} s, p95 {d['p95_s']:.2f} s, max {d['max_s']:.2f} s")
    when = "after the build" if build["ended"] else "the build still running"
    print(f"single upload → visible result ({s['n']}, idle worker, {when}; ran on {ran(s['runtimes'])}): "
          f"p50 {s['p50_s']:.2f} s, p95 {s['p95_s']:.2f} s, max {s['max_s']:.2f} s")
    print(f"burst of {b['uploads']} uploads from {b['clients']} clients: {b['done']} done, {b['failed']} failed, "
          f"{b['http_errors']} HTTP errors; upload → result p50 {b['p50_s']:.1f} s, p95 {b['p95_s']:.1f} s, "
          f"max {b['max_s']:.1f} s; {b['throughput_img_s']:.1f} images/s; {b['forward_passes']} forward passes "
          f"(mean batch {b['mean_batch']:.1f})")
    print(
        "worker peak resident memory: " + ", ".join(f"{k} {v:.0f} MB" for k, v in result["worker_peak_rss_mb"].items())
    )
    hm = result["heatmaps"]
    print(
        f"heat maps: {hm['done']} done, {hm['failed']} failed, the last {hm['after_burst_s']:.1f} s after the burst's "
        f"last result; explainer peak resident memory: "
        + ", ".join(f"{k} {v:.0f} MB" for k, v in result["explainer_peak_rss_mb"].items())
    )
    print(f"history page at {h['cases']} cases: p50 {h['p50_ms']:.1f} ms, p95 {h['p95_ms']:.1f} ms over "
          f"{h['requests']} requests; SQL queries {h['queries']}")
    d = result["dashboard"]
    print(f"clinic home page at {h['cases']} cases: p50 {d['p50_ms']:.1f} ms, p95 {d['p95_ms']:.1f} ms; "
          f"SQL queries {d['queries']['first page']}")
    return 0


if __name__ == "__main__":
    sys.exit(main(get_args_parser().parse_args()))

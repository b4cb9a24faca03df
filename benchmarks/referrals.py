"""Referral triage (issue 45), two figures in one run:

    python -m benchmarks.referrals --logits runs/s24/starter-val-logits.npz [--per-day 19] [--slots 15]
        [--days 30] [--open 10000] [--json]

1. **A month of referrals.** Each image of the development set's locked test split (578 dermoscopic images,
   none of them used to train or tune the shipped model) arrives once, at a random moment of a month (about 19
   a day); a dermatologist reviews ``--slots`` referrals a day, in working hours, always taking the first of the
   open list. The list is ordered as the product orders it (skinweb.referrals.models.triage_key: the AI's tier
   over the image at the shipped operating point, then the probability, then the wait; no checklist, which the
   dataset does not have) or in arrival order, from the same arrivals and slots. Printed per ordering: the
   median and 90th-percentile wait of melanomas and of all malignant lesions, and the day the last melanoma is
   reviewed. The probabilities are the shipped model's (its 8-view logits, ``--logits``: the cache that
   ``classifier.training.operatingpoint --logits`` writes; computed here when it is missing, about 30 minutes).
2. **The triage page with ``--open`` open referrals** on a throwaway PostgreSQL server (Debian's, as the tests
   start it; or ``--database-url``): p50/p95 of the page's server time over ``--requests`` requests (Django's
   test client, in process: the view, its queries and the template, not the network), first and last page,
   and its SQL query count.
"""

import argparse
import datetime
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
DATA = "../shared/datasets/isic-derm-dev"  # as the cached logits name their images (relative to the project)
WORK_START, WORK_END = 9.0, 17.0  # the review slots of a day, evenly in these hours


# 1. The month ----------------------------------------------------------------------------------------------------

def locked_probabilities(logits_path, data_dir):
    """(samples, probabilities) of the locked test split's images, as the worker computes them."""
    import dataclasses

    from classifier import operatingpoint as op_file
    from classifier.cascade import Cascade
    from classifier.modelfile import DEFAULT_MODEL_PATH
    from classifier.training import operatingpoint
    from classifier.training.data import load_samples, locked_test_split

    samples = load_samples(data_dir)
    locked = {str(s.path) for s in locked_test_split(samples)}
    meta, val, logits = operatingpoint.cached_view_logits(DEFAULT_MODEL_PATH, data_dir, logits_path, 16)
    keep = [i for i, s in enumerate(val) if str(s.path) in locked]
    op = op_file.read(op_file.DEFAULT_OPERATING_POINT_PATH)
    derived = dataclasses.replace(meta, **op_file.header_changes(op, meta))  # as the published version decides
    probs = operatingpoint.probabilities(derived, logits[keep], Cascade.from_metadata(derived))
    return [val[i] for i in keep], probs, {"threshold": derived.threshold, "band": derived.operating_point["band"]}


def review_times(days: int, slots: int, until_empty: int):
    """The moments (in days) a review slot opens: ``slots`` a day in working hours, for as long as needed."""
    step = (WORK_END - WORK_START) / slots / 24
    for day in range(days + until_empty):
        for k in range(slots):
            yield day + WORK_START / 24 + (k + 0.5) * step


def simulate(arrivals, keys, slots: int, days: int, target: float | None = None) -> np.ndarray:
    """Each referral's wait (days): at every slot the open referral with the smallest key is reviewed; with
    ``target`` (days), one waiting longer than that first (the longest waiting of them)."""
    import heapq

    order = np.argsort(arrivals)
    waits = np.full(len(arrivals), np.nan)
    heap, fifo, done, nxt = [], [], set(), 0
    for t in review_times(days, slots, until_empty=10 * days):
        while nxt < len(order) and arrivals[order[nxt]] <= t:
            i = order[nxt]
            heapq.heappush(heap, (keys[i], i))
            fifo.append(i)
            nxt += 1
        while fifo and fifo[0] in done:
            fifo.pop(0)
        if target is not None and fifo and t - arrivals[fifo[0]] > target:
            i = fifo.pop(0)
        else:
            while heap and heap[0][1] in done:
                heapq.heappop(heap)
            if not heap:
                if nxt == len(order):
                    break
                continue
            i = heapq.heappop(heap)[1]
        done.add(i)
        waits[i] = t - arrivals[i]
    return waits


def month(args) -> dict:
    from skinweb.referrals.models import ai_tier, triage_key

    samples, probs, op = locked_probabilities(args.logits, args.data)
    rng = np.random.default_rng(args.seed)
    n = len(samples)
    days = n / args.per_day
    arrivals = np.sort(rng.uniform(0, days, n))[rng.permutation(n)]
    low, high = op["band"]
    model_keys = [triage_key(ai_tier(float(p), low, high), 0, float(p), float(a)) for p, a in zip(probs, arrivals)]
    arrival_keys = [(float(a),) for a in arrivals]
    melanoma = np.array([s.diagnosis == "melanoma" for s in samples])
    malignant = np.array([s.label == 1 for s in samples])
    out = {"images": n, "melanomas": int(melanoma.sum()), "malignant": int(malignant.sum()),
           "days": round(days, 1), "arrivals_per_day": args.per_day, "review_slots_per_day": args.slots,
           "target_days": args.target,
           "operating_point": {"threshold": op["threshold"], "band": op["band"]}, "orderings": {}}
    orderings = (("model", model_keys, None), ("model, past target first", model_keys, args.target),
                 ("arrival", arrival_keys, None))
    for name, keys, target in orderings:
        waits = simulate(arrivals, keys, args.slots, int(np.ceil(days)), target)
        reviewed_at = arrivals + waits
        out["orderings"][name] = {
            "melanoma_wait_days": {"median": round(float(np.median(waits[melanoma])), 2),
                                   "p90": round(float(np.percentile(waits[melanoma], 90)), 2),
                                   "max": round(float(waits[melanoma].max()), 2)},
            "malignant_wait_days": {"median": round(float(np.median(waits[malignant])), 2),
                                    "p90": round(float(np.percentile(waits[malignant], 90)), 2)},
            "all_wait_days": {"median": round(float(np.median(waits)), 2)},
            "last_melanoma_reviewed_day": round(float(reviewed_at[melanoma].max()), 2),
            "last_referral_reviewed_day": round(float(reviewed_at.max()), 2),
        }
    return out


# 2. The page -----------------------------------------------------------------------------------------------------

class ThrowawayPostgres:
    """initdb in a temporary folder and a server on a free loopback port (as tests/run_all.sh does)."""

    def __init__(self):
        bins = sorted(Path("/usr/lib/postgresql").glob("*/bin"), key=lambda p: [int(x) for x in p.parent.name.split(".")
                                                                                if x.isdigit()])
        if not bins or not (bins[-1] / "initdb").exists():
            raise SystemExit("PostgreSQL is not installed (make test installs it), or pass --database-url")
        self.bin = bins[-1]
        self.dir = Path(tempfile.mkdtemp(prefix="skinweb-bench-pg-"))

    def as_pg(self, *cmd):
        prefix = ["runuser", "-u", "postgres", "--"] if os.getuid() == 0 else []
        subprocess.run([*prefix, *map(str, cmd)], check=True, stdout=subprocess.DEVNULL)

    def __enter__(self):
        from skinweb.launcher import free_port

        if os.getuid() == 0:
            shutil.chown(self.dir, "postgres")
        self.port = free_port()
        self.as_pg(self.bin / "initdb", "-D", self.dir / "data", "-U", "skinweb", "--auth=trust")
        self.as_pg(self.bin / "pg_ctl", "-D", self.dir / "data", "-l", self.dir / "server.log", "-w", "-o",
                   f"-p {self.port} -k {self.dir} -h 127.0.0.1", "start")
        self.as_pg(self.bin / "createdb", "-h", "127.0.0.1", "-p", self.port, "-U", "skinweb", "skinweb")
        return f"postgres://skinweb@127.0.0.1:{self.port}/skinweb"

    def __exit__(self, *exc):
        try:
            self.as_pg(self.bin / "pg_ctl", "-D", self.dir / "data", "-m", "immediate", "stop")
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)


def fill(n: int, seed: int):
    """One clinic with ``n`` open referrals from 20 practices (each with its patient, lesion; no images: the
    page reads the referral's triage columns only), tiers, scores and waits spread at random."""
    from django.utils import timezone

    from skinweb.accounts.models import Clinic, User
    from skinweb.clinic.models import Lesion, Patient
    from skinweb.referrals.models import Practice, Referral

    rng = np.random.default_rng(seed)
    clinic = Clinic.objects.create(name="Bench clinic")
    user = User.objects.create_user("bench", clinic=clinic)
    practices = [Practice.objects.create(name=f"Practice {i}", code=f"P{i}") for i in range(20)]
    for p in practices:
        p.clinics.add(clinic)
    patients = Patient.objects.bulk_create([Patient(clinic=clinic, identifier=f"B-{i}", birth_year=1950, sex="female")
                                            for i in range(n)], batch_size=2000)
    lesions = Lesion.objects.bulk_create([Lesion(patient=p, site="posterior torso") for p in patients],
                                         batch_size=2000)
    now = timezone.now()
    referrals = []
    for i, lesion in enumerate(lesions):
        r = Referral(practice=practices[i % 20], clinic=clinic, patient_identifier=str(i), birth_year=1950,
                     sex="female", site="posterior torso", duration_months=3, urgency=("urgent", "routine")[i % 2],
                     lesion=lesion, created_at=now - datetime.timedelta(hours=float(rng.uniform(0, 24 * 60))),
                     ai_tier=int(rng.integers(0, 4)), ai_probability=float(rng.uniform()),
                     checklist_score=int(rng.integers(0, 11)))
        referrals.append(r)
    Referral.objects.bulk_create(referrals, batch_size=2000)
    return user


def page(args) -> dict:
    """The triage page's timing, on the database Django was set up with (PostgreSQL: main() sees to it)."""
    from django.conf import settings
    from django.core.management import call_command
    from django.db import connection
    from django.test import Client
    from django.test.utils import CaptureQueriesContext, override_settings
    from django.urls import reverse

    call_command("migrate", verbosity=0)
    user = fill(args.open, args.seed)
    client = Client(HTTP_HOST="127.0.0.1")
    client.force_login(user)
    url = reverse("referrals:triage")
    last = f"{url}?page={(args.open + 24) // 25}"
    result = {"open_referrals": args.open, "database": connection.vendor}
    # Pages name static files by their collected copies outside DEBUG; nothing is collected here.
    with override_settings(STORAGES={**settings.STORAGES, "staticfiles": {
            "BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"}}):
        for label, target in (("first page", url), ("last page", last)):
            for _ in range(3):
                client.get(target)  # warm
            times = []
            for _ in range(args.requests):
                t = time.perf_counter()
                r = client.get(target)
                times.append(1000 * (time.perf_counter() - t))
                assert r.status_code == 200, r.status_code
            with CaptureQueriesContext(connection) as ctx:
                client.get(target)
            result[label] = {"p50_ms": round(float(np.percentile(times, 50)), 1),
                             "p95_ms": round(float(np.percentile(times, 95)), 1),
                             "queries": len(ctx.captured_queries)}
    return result


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=str(DATA))
    p.add_argument("--logits", default=str(ROOT / "runs" / "starter-val-logits.npz"),
                   help="the shipped model's 8-view logits of the validation images (read, or written)")
    p.add_argument("--per-day", type=float, default=19.0, help="referrals arriving a day")
    p.add_argument("--slots", type=int, default=15, help="referrals a dermatologist reviews a day")
    p.add_argument("--target", type=float, default=14.0,
                   help="the clinic's target wait (days) for the ordering that takes referrals past it first")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--open", type=int, default=10_000, help="open referrals for the page's timing (0: skip it)")
    p.add_argument("--requests", type=int, default=50)
    p.add_argument("--database-url", default="", help="an empty PostgreSQL database (default: a throwaway one)")
    p.add_argument("--skip-month", action="store_true")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    sys.path.insert(0, str(ROOT))
    os.chdir(ROOT)
    os.environ["DJANGO_SETTINGS_MODULE"] = "skinweb.settings"
    import contextlib

    import django

    with contextlib.ExitStack() as stack:
        # The page is timed on PostgreSQL, never on the installation's own database: a throwaway server unless
        # --database-url names one. Django is set up once, after, for both parts.
        if args.open:
            os.environ["DATABASE_URL"] = args.database_url or stack.enter_context(ThrowawayPostgres())
        else:
            os.environ.pop("DATABASE_URL", None)
        django.setup()  # the tier rule is the product's (skinweb.referrals.models)
        result = {} if args.skip_month else {"month": month(args)}
        if args.open:
            result["triage_page"] = page(args)
    if args.json:
        print(json.dumps(result))
        return 0
    if "month" in result:
        m = result["month"]
        print(f"a month of referrals: the {m['images']} locked-split images ({m['melanomas']} melanomas, "
              f"{m['malignant']} malignant) arriving over {m['days']} days ({m['arrivals_per_day']} a day), "
              f"{m['review_slots_per_day']} reviews a day; operating point {m['operating_point']}")
        for name, o in m["orderings"].items():
            mw, aw = o["melanoma_wait_days"], o["malignant_wait_days"]
            print(f"  {name:26s} order: melanoma wait median {mw['median']} d, p90 {mw['p90']} d, max {mw['max']} d; "
                  f"malignant median {aw['median']} d, p90 {aw['p90']} d; all median {o['all_wait_days']['median']} d; "
                  f"last melanoma reviewed on day {o['last_melanoma_reviewed_day']}, last referral on day "
                  f"{o['last_referral_reviewed_day']}")
    if "triage_page" in result:
        t = result["triage_page"]
        print(f"triage page with {t['open_referrals']} open referrals ({t['database']}): first page p50 "
              f"{t['first page']['p50_ms']} ms, p95 {t['first page']['p95_ms']} ms, {t['first page']['queries']} "
              f"queries; last page p50 {t['last page']['p50_ms']} ms, p95 {t['last page']['p95_ms']} ms, "
              f"{t['last page']['queries']} queries")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The cost of large uploads through the web process: request times and its peak resident memory.

    python -m benchmarks.uploads [--side 7700] [--parallel 4] [--json]

Four clinicians upload a 7700 x 7700 PNG (59 megapixels, just under the pixel limit, a few hundred
KB on disk) at the same moment; then each case's thumbnail and one case's PDF report are fetched.
The same run is made twice, each in a fresh stack (gunicorn with one worker process and 4 threads,
Redis, SQLite in a temporary folder), and printed side by side:

- baseline: ``MAX_STORED_SIDE=0``, the stored copy kept at full size (as before the copy was
  bounded): the PDF and every later read of the image decode 59 megapixels;
- bounded: the default ``MAX_STORED_SIDE`` (2048 px), thumbnails made once at upload.

Figures are printed, never asserted (tests/test_benchmarks.py runs a small version).
"""

import argparse
import io
import json
import os
import secrets
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from benchmarks.stack import ROOT, Browser, setup_django
from skinweb.launcher import Processes, free_port, redis_command

CONFIGS = [("baseline (MAX_STORED_SIDE=0: full-size copy)", "0"), ("bounded (MAX_STORED_SIDE=2048)", "2048")]


def big_png(side: int) -> bytes:
    from PIL import Image, ImageDraw

    img = Image.new("RGB", (side, side), (196, 150, 120))
    draw = ImageDraw.Draw(img)
    for i in range(0, side, max(side // 40, 1)):
        draw.ellipse((i // 2, i // 2, side - i // 2, side - i // 2), outline=(90 + i % 80, 60, 40), width=3)
    out = io.BytesIO()
    img.save(out, format="PNG", optimize=True)
    return out.getvalue()


def run_one(max_stored_side: str, side: int, parallel: int) -> dict:
    workdir = Path(tempfile.mkdtemp(prefix="skinweb-bench-uploads-"))
    redis_port, web_port = free_port(), free_port()
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "skinweb.settings", "SKINWEB_VAR_DIR": str(workdir),
           "SQLITE_PATH": str(workdir / "db.sqlite3"), "DATABASE_URL": "", "MEDIA_ROOT": str(workdir / "media"),
           "REDIS_URL": f"redis://127.0.0.1:{redis_port}/0", "SECRET_KEY": secrets.token_urlsafe(50), "DEBUG": "0",
           "ALLOWED_HOSTS": "127.0.0.1", "LOG_LEVEL": "WARNING", "MAX_STORED_SIDE": max_stored_side}
    procs = Processes(env, log_dir=workdir)
    try:
        for cmd in (["migrate", "--noinput"], ["collectstatic", "--noinput"]):
            subprocess.run(
                [sys.executable, "manage.py", *cmd], cwd=ROOT, env=env, check=True, stdout=subprocess.DEVNULL
            )
        procs.start("redis", redis_command(redis_port, workdir), ready_port=redis_port)
        procs.start("web", [sys.executable, "-m", "gunicorn", "skinweb.wsgi:application", "--bind",
                            f"127.0.0.1:{web_port}", "--workers", "1", "--threads", str(parallel), "--timeout", "300"],
                    ready_port=web_port)
        base = f"http://127.0.0.1:{web_port}"
        setup_django(env)
        from skinweb.accounts.models import Clinic, User
        from skinweb.clinic.models import Case, Lesion, Patient

        clinic = Clinic.objects.create(name="Bench clinic")
        User.objects.create_user("bench", password="bench-password", clinic=clinic)
        lesion = Lesion.objects.create(patient=Patient.objects.create(clinic=clinic, identifier="B-1",
                                                                      birth_year=1970, sex="female"), site="back")
        data = big_png(side)
        browsers = [Browser(base) for _ in range(parallel)]
        for b in browsers:
            b.login("bench", "bench-password")
            b.get("/")  # warm the worker's code paths
        rss_before = web_rss(procs)

        def upload(i):
            t0 = time.perf_counter()
            status, _, _ = browsers[i].post(f"/lesions/{lesion.pk}/upload/", files=[("images", f"big{i}.png", data)])
            return status, time.perf_counter() - t0

        with ThreadPoolExecutor(parallel) as pool:
            uploads = list(pool.map(upload, range(parallel)))
        cases = list(Case.objects.order_by("pk"))
        thumbs = []
        for c in cases:
            t0 = time.perf_counter()
            browsers[0].get(f"/cases/{c.pk}/image/?size=thumb")
            thumbs.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        browsers[0].get(f"/cases/{cases[0].pk}/report.pdf")
        pdf_s = time.perf_counter() - t0
        return {"max_stored_side": int(max_stored_side), "upload_bytes": len(data), "uploaded_px": [side, side],
                "stored_px": [cases[0].width, cases[0].height], "cases": len(cases),
                "upload_statuses": [s for s, _ in uploads], "upload_s": [round(t, 2) for _, t in uploads],
                "thumbnail_s": [round(t, 3) for t in thumbs], "pdf_s": round(pdf_s, 2),
                "web_rss_before_mb": round(rss_before), "web_peak_rss_mb": round(web_rss(procs, peak=True))}
    finally:
        procs.stop_all()
        import shutil

        shutil.rmtree(workdir, ignore_errors=True)


def web_rss(procs, peak=False) -> float:
    """Resident memory of gunicorn's worker process (the master's child), now or at its peak."""
    children = [mb for key, mb in procs.memory_mb("web", "VmHWM" if peak else "VmRSS").items() if key != "main"]
    return children[0] if children else float("nan")


def get_args_parser():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--side", type=int, default=7700, help="side of the square PNG uploaded, in pixels")
    p.add_argument("--parallel", type=int, default=4, help="uploads at the same moment")
    p.add_argument("--json", action="store_true")
    p.add_argument("--one", help=argparse.SUPPRESS)  # internal: run one configuration in this process
    return p


def main(args) -> int:
    if args.one is not None:
        print(json.dumps(run_one(args.one, args.side, args.parallel)))
        return 0
    results = {}
    for label, value in CONFIGS:  # each in its own process: Django is set up once per process
        print(f"{label} …", file=sys.stderr, flush=True)
        out = subprocess.run([sys.executable, "-m", "benchmarks.uploads", "--one", value, "--side", str(args.side),
                              "--parallel", str(args.parallel)], cwd=ROOT, capture_output=True, text=True)
        if out.returncode != 0:
            print(out.stderr[-3000:], file=sys.stderr)
            return 1
        results[label] = json.loads(out.stdout.strip().splitlines()[-1])
    if args.json:
        print(json.dumps(results, indent=2))
        return 0
    first = next(iter(results.values()))
    print(
        f"{args.parallel} parallel uploads of a {args.side} x {args.side} PNG ({first['upload_bytes'] / 1024:.0f} KB), "
        "gunicorn: 1 worker process, threads = uploads"
    )
    for label, r in results.items():
        print(f"\n{label}")
        print(f"  stored copy: {r['stored_px'][0]} x {r['stored_px'][1]} px; statuses {r['upload_statuses']}")
        print(f"  upload request times: {', '.join(f'{t:.2f}' for t in r['upload_s'])} s")
        print(
            f"  thumbnails: {', '.join(f'{t * 1000:.0f}' for t in r['thumbnail_s'])} ms; PDF report {r['pdf_s']:.2f} s"
        )
        print(f"  web worker resident memory: {r['web_rss_before_mb']} MB before, peak {r['web_peak_rss_mb']} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main(get_args_parser().parse_args()))

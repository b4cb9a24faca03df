"""How long a similar-lesion query takes (classifier.reference.nearest: exact cosine search), on an index of
random unit vectors of the embedding's size, against the same query by scikit-learn's brute-force
NearestNeighbors (cosine) as the baseline in the same run:

    python -m benchmarks.retrieval [--sizes 6588,100000] [--queries 200] [--k 8] [--threads 2]

Prints, per index size, p50/p95/max milliseconds per query (one query at a time, as a page asks) and
the index's memory. The figure to reach (issue 32): a query over 100,000 entries within 20 ms p95 on
the project's 2 cores.
"""

import argparse
import json
import os
import time

import numpy as np


def percentiles(ms):
    ms = np.sort(np.asarray(ms))
    return {"p50": round(float(np.percentile(ms, 50)), 2), "p95": round(float(np.percentile(ms, 95)), 2),
            "max": round(float(ms[-1]), 2)}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", default="6588,100000")
    p.add_argument("--queries", type=int, default=200)
    p.add_argument("--k", type=int, default=8)
    p.add_argument("--dim", type=int, default=512)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(var, str(args.threads))
    from classifier import reference

    rng = np.random.default_rng(0)
    results = []
    for n in (int(s) for s in args.sizes.split(",")):
        library = reference.normalise(rng.normal(size=(n, args.dim)).astype(np.float32))
        queries = rng.normal(size=(args.queries, args.dim)).astype(np.float32)
        reference.nearest(queries[0], library, args.k)  # warm
        ours = []
        for q in queries:
            t = time.perf_counter()
            found, _ = reference.nearest(q, library, args.k)
            ours.append(1000 * (time.perf_counter() - t))
        row = {"n": n, "k": args.k, "index_mb": round(library.nbytes / 2**20, 1), "exact_numpy_ms": percentiles(ours)}
        try:
            from sklearn.neighbors import NearestNeighbors
        except ImportError:  # the baseline is a development dependency
            row["sklearn_brute_ms"] = None
        else:
            nn = NearestNeighbors(n_neighbors=args.k, metric="cosine", algorithm="brute").fit(library)
            theirs, agree = [], 0
            for q in queries:
                t = time.perf_counter()
                _, idx = nn.kneighbors(q[None])
                theirs.append(1000 * (time.perf_counter() - t))
                agree += set(idx[0]) == set(reference.nearest(q, library, args.k)[0])
            row["sklearn_brute_ms"] = percentiles(theirs)
            row["same_neighbours"] = f"{agree}/{len(queries)}"
        results.append(row)
        if not args.json:
            print(f"{n:>7} entries ({row['index_mb']} MB): exact numpy p50 {row['exact_numpy_ms']['p50']} ms, "
                  f"p95 {row['exact_numpy_ms']['p95']} ms, max {row['exact_numpy_ms']['max']} ms"
                  + (f"; sklearn brute p95 {row['sklearn_brute_ms']['p95']} ms, same neighbours "
                     f"{row['same_neighbours']}" if row.get("sklearn_brute_ms") else ""))
    if args.json:
        print(json.dumps(results))


if __name__ == "__main__":
    main()

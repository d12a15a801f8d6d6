"""Helpers shared by the benchmarks: timing, the environment, a printed table."""

from __future__ import annotations

import os
import resource
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
os.environ.setdefault("FIFTYONE_DATABASE_DIR", os.path.join(ROOT, ".fiftyone", "db"))
os.environ.setdefault("FIFTYONE_PLUGINS_DIR", os.path.join(ROOT, ".fiftyone", "plugins"))  # `make install` links here
os.environ.setdefault("FIFTYONE_DATABASE_VALIDATION", "false")
os.environ.setdefault("FIFTYONE_DO_NOT_TRACK", "true")
os.environ.setdefault("FO_SSL_CACHE_DIR", os.path.join(ROOT, ".cache", "fo-ssl"))


def best_of(fn, repeat: int = 3) -> float:
    """Minimum wall time of ``fn()`` over ``repeat`` runs (the least noisy estimate on a shared machine)."""
    best = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def peak_gb() -> float:
    """This process's peak resident memory so far, in GB (``ru_maxrss`` is in kB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def table(rows: list[dict], title: str) -> None:
    print(f"\n## {title}")
    cols = list(rows[0])
    print("| " + " | ".join(cols) + " |")
    print("|" + "---|" * len(cols))
    for r in rows:
        print("| " + " | ".join(f"{v:.3g}" if isinstance(v, float) else str(v) for v in r.values()) + " |")

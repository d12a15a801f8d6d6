"""``make bench``: run the benchmarks of this folder and print one report (every table, in one place, at the end).

Each benchmark runs in its own process (its progress streams as it goes); the report then repeats every markdown
table and heading each one printed, under the benchmark's name, with its wall time.

    python bench/run_all.py                               # every bench_*.py at its defaults
    python bench/run_all.py --only scale io --sizes 10000 50000 200000 --io-sizes 1000000
    python bench/run_all.py --device cuda                 # the benchmarks that take a device run on the GPU
"""

from __future__ import annotations

import argparse
import glob
import os
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
DEVICE_BENCHES = ("embeddings", "influence", "pipeline")  # the benchmarks that take --device


def main() -> None:
    names = [os.path.basename(p)[len("bench_"):-3] for p in sorted(glob.glob(os.path.join(HERE, "bench_*.py")))]
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", nargs="+", choices=names, help="run only these benchmarks")
    ap.add_argument("--skip", nargs="+", choices=names, default=[], help="leave these out")
    ap.add_argument("--sizes", type=int, nargs="+", help="N of the Brain comparison (bench_scale; default 10k 50k)")
    ap.add_argument("--repeat", type=int, default=3,
                    help="runs of each stage of the Brain comparison, ours and Brain's side by side (medians)")
    ap.add_argument("--io-sizes", type=int, nargs="+", help="N of the FiftyOne I/O benchmark (default 200k)")
    ap.add_argument("--device", help="device of the benchmarks that take one (embeddings, influence)")
    args = ap.parse_args()
    extra = {"scale": [*(["--sizes", *map(str, args.sizes)] if args.sizes else []), "--repeat", str(args.repeat)],
             "io": ["--sizes", *map(str, args.io_sizes)] if args.io_sizes else []}
    if args.device:
        extra.update({name: ["--device", args.device] for name in DEVICE_BENCHES})
    report = []
    for name in names:
        if (args.only and name not in args.only) or name in args.skip:
            continue
        cmd = [sys.executable, os.path.join(HERE, f"bench_{name}.py"), *extra.get(name, [])]
        print(f"\n# bench_{name}.py {' '.join(extra.get(name, []))}", flush=True)
        t = time.perf_counter()
        p = subprocess.Popen(cmd, cwd=HERE, stdout=subprocess.PIPE, text=True)
        lines = []
        for line in p.stdout:  # stream it and keep it for the report
            print(line, end="", flush=True)
            lines.append(line.rstrip("\n"))
        rc = p.wait()
        kept = [ln for ln in lines if ln.startswith(("|", "#"))]
        status = "" if rc == 0 else f", FAILED (exit {rc})"
        report.append(f"\n## bench_{name}.py ({time.perf_counter() - t:.0f} s{status})\n" + "\n".join(kept))
    print("\n\n# Benchmark report\n" + "\n".join(report))


if __name__ == "__main__":
    main()

"""Run every benchmark in this folder in turn (``make bench``); extra arguments are passed to each."""

import glob
import os
import subprocess
import sys

here = os.path.dirname(os.path.abspath(__file__))
for script in sorted(glob.glob(os.path.join(here, "bench_*.py"))):
    print(f"\n# {os.path.basename(script)}", flush=True)
    subprocess.run([sys.executable, script, *sys.argv[1:]], cwd=here, check=True)

"""What the browser tests share: where the App driver scripts live, the skip when no browser is installed, and
starting an App server process on a free port."""

import os
import shutil
import socket
import subprocess
import time
import urllib.request

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
APP_DIR = os.path.join(ROOT, "tests", "app")
ARTIFACTS = os.path.join(ROOT, "artifacts")
CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")

needs_browser = pytest.mark.skipif(
    not (os.path.exists(CHROMIUM) and shutil.which("node") and os.path.isdir(os.path.join(APP_DIR, "node_modules"))),
    reason="needs chromium, node and tests/app/node_modules: run `make app-deps`")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(args: list[str], url: str, seconds: int, **popen) -> subprocess.Popen:
    """Start the App server process ``args`` and wait until ``url`` answers (fails the test after ``seconds``)."""
    proc = subprocess.Popen(args, env=os.environ.copy(), stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, **popen)
    deadline = time.time() + seconds
    while time.time() < deadline:
        try:
            if urllib.request.urlopen(url, timeout=2).status == 200:
                return proc
        except OSError:
            time.sleep(1)
    proc.kill()
    pytest.fail(f"the App server did not start in {seconds} s")

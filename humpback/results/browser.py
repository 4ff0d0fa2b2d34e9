"""Headless Chromium, for screenshots of the HTML outputs and for the tests that render them."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile

from .. import HumpbackError

# Offline and quiet: no first-run UI, no background traffic, a fresh profile per call.
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync", "--hide-scrollbars"]


def find_chromium() -> str | None:
    for name in (os.environ.get("CHROMIUM"), "chromium", "chromium-browser", "google-chrome"):
        if name and (path := shutil.which(name)):
            return path
    return None


def run(url: str, *args: str, budget_ms: int = 5000, timeout: int = 120) -> subprocess.CompletedProcess:
    """Load `url`, let its scripts run for `budget_ms` of virtual time, then apply `args`
    (`--dump-dom`, `--screenshot=...`)."""
    exe = find_chromium()
    if exe is None:
        raise HumpbackError("chromium not found (apt-get install chromium, or set CHROMIUM=/path/to/it)")
    with tempfile.TemporaryDirectory(prefix="humpback-chromium-") as profile:
        return subprocess.run([exe, *FLAGS, f"--user-data-dir={profile}", f"--virtual-time-budget={budget_ms}",
                               *args, url], capture_output=True, text=True, timeout=timeout)


def file_url(path: str, fragment: str = "") -> str:
    url = "file://" + os.path.abspath(path)
    return f"{url}#{fragment}" if fragment else url


def dump_dom(url: str, budget_ms: int = 5000) -> str:
    """The DOM after the page's scripts ran, serialized."""
    proc = run(url, "--dump-dom", budget_ms=budget_ms)
    if proc.returncode != 0 or "<html" not in proc.stdout:
        raise HumpbackError(f"chromium could not render {url}: {proc.stderr.strip().splitlines()[-1:]}")
    return proc.stdout


def screenshot(path: str, out: str, width: int = 1280, height: int = 1600, fragment: str = "") -> str:
    """A PNG of the page at `path` (a local HTML file; `fragment`: its URL's part after `#`), written to `out`."""
    if not os.path.exists(path):
        raise HumpbackError(f"{path} not found")
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    if os.path.exists(out):
        os.remove(out)  # so that a stale file cannot pass for a new screenshot
    proc = run(file_url(path, fragment), f"--window-size={width},{height}", f"--screenshot={os.path.abspath(out)}")
    if not os.path.exists(out):
        raise HumpbackError(f"chromium wrote no screenshot of {path}: {proc.stderr.strip().splitlines()[-1:]}")
    return out

"""Entry-point wrapper for `stages/*.py`: user errors print one line, never a traceback.

Every run also reports its wall time, on stderr and in a git-ignored log (`logs/timings.log`, one line
per stage run), with the CPU model and the 1-minute load average, since on a shared machine a time means
little without them. Timings are not DVC metrics: they differ from run to run and would make every
`dvc metrics diff` noisy.
"""

from __future__ import annotations

import datetime
import json
import os
import sys
import time

from . import HumpbackError, work
from .dist import is_main_process

TIMINGS_LOG = os.path.join("logs", "timings.log")
WORK_LOG = os.path.join("logs", "work.jsonl")  # per stage run: seconds and tokens computed (humpback.work)


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform

    return platform.processor() or platform.machine()


def _stage_name() -> str:
    name = os.path.splitext(os.path.basename(sys.argv[0]))[0] or "stage"
    return "_".join([name, *sys.argv[1:2]])  # `finetune.py round1` is the finetune_round1 stage


def report_timing(stage: str, seconds: float) -> str:
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    line = f"timings: {stage} {seconds:.1f}s (cpu: {cpu_model()} x{os.cpu_count()}, load: {load:.2f})"
    print(line, file=sys.stderr)
    now = f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%dT%H:%M:%SZ}"
    record = {"time": now, "stage": stage, "seconds": round(seconds, 2), "cpu": cpu_model(), "cores": os.cpu_count(),
              "load": round(load, 2), "tokens": dict(work.TOKENS)}
    try:
        os.makedirs(os.path.dirname(TIMINGS_LOG), exist_ok=True)
        with open(TIMINGS_LOG, "a", encoding="utf-8") as f:
            f.write(f"{now} {line}\n")
        with open(WORK_LOG, "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")
    except OSError:
        pass  # a read-only checkout still runs; the stderr line is the record
    return line


def run(main, timed: bool = True) -> None:
    """Run `main`; a HumpbackError is its one line on stderr. A stage that finishes reports its time
    (a failed one reports only its error, so that the error stays one line)."""
    start = time.perf_counter()
    try:
        main()
    except HumpbackError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)
    if timed and is_main_process():
        report_timing(_stage_name(), time.perf_counter() - start)

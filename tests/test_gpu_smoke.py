"""scripts/gpu-smoke: one line and exit 0 without CUDA; its steps (scripts/gpu_smoke.py) all pass on CPU."""

import importlib.util
import json
import os
import re
import subprocess
import sys

import pytest

LINE = re.compile(r"^gpu-smoke: (\S+) (ok|FAILED|skipped): .* \(\d+\.\ds\)$")


def _run(cmd, repo_root, **env):
    return subprocess.run(cmd, cwd=repo_root, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          env={**os.environ, **env}, timeout=120)


@pytest.mark.parametrize("python, says", [(None, r"\(torch \S+\)"),
                                          ("/bin/false", r"\(torch not installed for /bin/false\)")])
def test_without_cuda_it_prints_one_line_and_exits_0(repo_root, python, says):
    env = {"CUDA_VISIBLE_DEVICES": ""}  # no GPU even where one is
    if python:
        env["GPU_SMOKE_PYTHON"] = python
    proc = _run(["bash", "scripts/gpu-smoke"], repo_root, **env)
    assert proc.returncode == 0, proc.stdout
    lines = proc.stdout.splitlines()
    assert len(lines) == 1, proc.stdout
    assert re.fullmatch(rf"gpu-smoke: no CUDA device here {says}; nothing to do", lines[0]), lines[0]


def test_device_cuda_without_cuda_fails_in_one_line(repo_root):
    proc = subprocess.run([sys.executable, "scripts/gpu_smoke.py", "--device", "cuda"], cwd=repo_root, text=True,
                          capture_output=True, env={**os.environ, "CUDA_VISIBLE_DEVICES": ""}, timeout=120)
    assert proc.returncode == 1
    assert proc.stdout.splitlines() == [proc.stdout.strip()] and "sees no CUDA device" in proc.stdout


def test_every_step_passes_on_cpu(repo_root, tmp_path):
    """The GPU run's code path, on CPU: training, generation, rating, 4-bit loading and a QLoRA step."""
    sys.path.insert(0, os.path.join(repo_root, "scripts"))
    try:
        import gpu_smoke
    finally:
        sys.path.pop(0)
    out = tmp_path / "smoke.json"
    proc = subprocess.run([sys.executable, "scripts/gpu_smoke.py", "--device", "cpu", "--dtype", "float32",
                           "--work", str(tmp_path / "work"), "--json", str(out)], cwd=repo_root, text=True,
                          capture_output=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr[-4000:]
    lines = proc.stdout.splitlines()
    # stdout holds one line per step and the summary, nothing else (library output goes to stderr)
    assert len(lines) == len(gpu_smoke.STEPS) + 1, proc.stdout
    assert [LINE.match(line).group(1) for line in lines[:-1]] == list(gpu_smoke.STEPS), proc.stdout
    assert lines[-1].startswith("gpu-smoke: passed: ") and "on cpu" in lines[-1]
    results = {r["step"]: r for r in json.loads(out.read_text())["steps"]}
    have_bnb = importlib.util.find_spec("bitsandbytes") is not None  # 0.45+ quantizes 4-bit on CPU too
    for step, r in results.items():
        expected = "skipped" if step in ("4bit", "qlora") and not have_bnb else "ok"
        assert r["status"] == expected, (step, r)
    assert "on cpu" in results["generate"]["detail"]
    if have_bnb:
        assert "Linear4bit layers (nf4" in results["4bit"]["detail"]

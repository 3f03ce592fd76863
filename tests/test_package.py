"""The package as another project sees it: importing it changes nothing in the process, and
pyproject.toml declares what requirements.txt pins."""

import json
import os
import re
import subprocess
import sys
import tomllib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Runs in a fresh Python: records every C library ctypes loads, imports JAX and the libraries
# jpanning builds on first (importing jax sets variables of its own, TF_CPP_MIN_LOG_LEVEL and
# TPU_SKIP_MDS_QUERY), then compares os.environ around `import jpanning` and around
# `import jpanning.scores`, then runs cpu.configure() to show the probe sees a change.
_PROBE = """
import ctypes, json, os, sys
loaded = []
class Recording(ctypes.CDLL):
    def __init__(self, name, *args, **kwargs):
        loaded.append(str(name))
        super().__init__(name, *args, **kwargs)
ctypes.CDLL = Recording

def changed(before):
    keys = set(before) | set(os.environ)
    return sorted(k for k in keys if before.get(k) != os.environ.get(k))

out = {}
import jax, flax, optax, chex, numpy  # their own import-time settings are theirs
before = dict(os.environ)
import jpanning
out["import jpanning"] = changed(before)
before = dict(os.environ)
import jpanning.scores, jpanning.models, jpanning.masks, jpanning.train
out["import jpanning.scores"] = changed(before)
from jpanning import cpu
out["libc"] = [n for n in loaded if "libc" in n]
out["state"] = [cpu._MALLOC, cpu._USER_CHOICE, cpu.allocator_setting()]
before = dict(os.environ)
cpu.configure()
out["configure"] = changed(before)
out["libc after configure"] = [n for n in loaded if "libc" in n]
print(json.dumps(out))
"""


def test_import_changes_neither_the_environment_nor_the_allocator():
    """``import jpanning`` and ``import jpanning.scores`` leave ``os.environ`` as it was and
    call no ``mallopt`` (libc is never loaded through ctypes; the allocator state is unset);
    ``jpanning.cpu.configure()`` afterwards does both, so the probe can see them."""
    drop = ("XLA_FLAGS", "JPANNING_CPU_FAST", "JAX_PLATFORMS", "GLIBC_TUNABLES")
    env = {k: v for k, v in os.environ.items() if k not in drop and not k.startswith("MALLOC_")}
    proc = subprocess.run(
        [sys.executable, "-c", _PROBE],
        env=env | {"JAX_PLATFORMS": "cpu"},
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["import jpanning"] == []
    assert out["import jpanning.scores"] == []
    assert out["libc"] == [] and out["state"] == [None, None, "glibc default"]
    from jpanning import cpu

    if cpu._jaxlib_measured():
        assert out["configure"] == ["XLA_FLAGS"]
    if sys.platform.startswith("linux"):
        assert out["libc after configure"] == ["libc.so.6"]


def _names(requirements: list[str]) -> set[str]:
    """Normalised distribution names of requirement lines (PEP 503)."""
    out = set()
    for line in requirements:
        line = line.split("#")[0].strip()
        if line and not line.startswith("-"):
            name = re.match(r"[A-Za-z0-9._-]+", line)[0]
            out.add(re.sub(r"[-_.]+", "-", name).lower())
    return out


def _lines(name: str) -> list[str]:
    with open(os.path.join(ROOT, name)) as f:
        return f.read().splitlines()


def test_pyproject_declares_the_pinned_requirements():
    """Runtime dependencies are requirements.txt's but the test tools; extras ``test`` and
    ``bench``/``torch`` are the rest and requirements-bench.txt's additions."""
    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
        project = tomllib.load(f)["project"]
    pinned = _names(_lines("requirements.txt"))
    extras = {k: _names(v) for k, v in project["optional-dependencies"].items()}
    runtime = _names(project["dependencies"])
    assert runtime | extras["test"] == pinned
    assert not runtime & extras["test"]
    assert extras["bench"] == extras["torch"] == _names(_lines("requirements-bench.txt"))

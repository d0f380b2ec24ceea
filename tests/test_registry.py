"""The registry and lazy imports: no framework is imported until its backend is asked for."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import multirnn
from multirnn.backends import install_hint
from tests.conftest import require_backend

FRAMEWORKS = ("torch", "mxnet", "tensorflow", "jax", "flax", "keras")


def test_known_backends():
    assert multirnn.known_backends() == ["numpy", "torch", "mxnet", "tensorflow", "jax"]


def test_unknown_backend_lists_known_names():
    with pytest.raises(ValueError, match=r"Unknown backend 'pytroch'\. Known backends: \['numpy', 'torch'"):
        multirnn.get_backend("pytroch")


def test_aliases():
    assert multirnn.get_backend("NP").name == "numpy"


def test_unknown_mode_and_device_are_clear_errors():
    with pytest.raises(ValueError, match="mode"):
        multirnn.get_backend("numpy", mode="turbo")
    with pytest.raises(ValueError, match="device"):
        multirnn.get_backend("numpy", device="tpu")


def test_install_hints_name_the_extra():
    assert install_hint("tf") == "pip install 'multirnn[tensorflow]'"
    assert install_hint("jax") == "pip install 'multirnn[jax]'"


# A None entry in sys.modules makes "import torch" raise ImportError, as if it were not installed.
BLOCKER = f"import sys\nfor _m in {FRAMEWORKS!r}:\n    sys.modules[_m] = None\n"


def run_python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)


def test_import_and_numpy_backend_work_with_every_framework_blocked():
    code = BLOCKER + textwrap.dedent(
        """
        import multirnn
        assert multirnn.available_backends() == ["numpy"], multirnn.available_backends()
        be = multirnn.get_backend("numpy")
        r = multirnn.train(be, multirnn.preset("quick", num_hiddens=16, num_epochs=1, max_tokens=2000))
        print(round(r.history.perplexity[0], 3))
        for name in ("torch", "mxnet", "tensorflow", "jax"):
            try:
                multirnn.get_backend(name)
            except multirnn.BackendUnavailableError as exc:
                assert f"multirnn[{name}]" in str(exc), exc
            else:
                raise AssertionError(name + " should be unavailable")
        print("ok")
        """
    )
    proc = run_python(code)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split()[-1] == "ok"


def test_import_multirnn_imports_no_framework():
    proc = run_python(
        "import sys, multirnn, multirnn.harness, multirnn.data\n"
        f"print(sorted(m for m in {FRAMEWORKS!r} if m in sys.modules))"
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"


@pytest.mark.parametrize("name", ["torch", "mxnet", "tensorflow", "jax"])
def test_a_backend_imports_only_its_own_framework_and_trains_quietly(name):
    """Import, one fast training step and its result: no other framework, nothing on stderr, with
    the frameworks' log-level variables unset (the defaults a user gets)."""
    require_backend(name)
    code = textwrap.dedent(
        f"""
        import sys, multirnn
        from tests.conftest import random_problem
        b = multirnn.get_backend({name!r}, mode="fast")
        p, X, Y, h = random_problem()
        float(b.train_step(b.params_from_numpy(p), X, Y, b.init_state(3, 7, "float64"), 0.1, 1.0)[1])
        print(sorted(m for m in {FRAMEWORKS!r} if m in sys.modules))
        """
    )
    env = {k: v for k, v in os.environ.items() if k not in ("TF_CPP_MIN_LOG_LEVEL", "TORCH_CPP_LOG_LEVEL")}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env=env,
                          cwd=Path(__file__).resolve().parents[1])
    assert proc.returncode == 0, proc.stderr
    # keras ships inside tensorflow's own import
    assert set(eval(proc.stdout.strip().splitlines()[-1])) == ({name, "keras"} if name == "tensorflow" else {name})
    assert proc.stderr == ""

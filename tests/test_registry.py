"""The registry and lazy imports: no framework is imported until its backend is asked for."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
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


# --- wrong arguments are TypeErrors naming what was expected, not errors deep inside a backend ------


@pytest.mark.parametrize("name", ["numpy", "torch"])
def test_a_cell_name_as_model_is_a_type_error_naming_model(name):
    require_backend(name)
    with pytest.raises(TypeError, match=r"model must be a multirnn\.Model.*got str 'lstm' \(for a cell name: Model\('lstm'\)\)"):
        multirnn.get_backend(name, model="lstm")
    with pytest.raises(TypeError, match="got dict"):
        multirnn.get_backend(name, model={"cell": "lstm"})
    assert multirnn.get_backend(name, model=multirnn.Model("lstm")).model.cell.name == "lstm"


def test_params_helpers_refuse_a_cell_name_as_model():
    from multirnn.params import param_shapes, validate_params

    params = multirnn.init_params(5, 3)
    for call in (lambda: multirnn.init_params(5, 3, model="gru"), lambda: validate_params(params, "gru"),
                 lambda: param_shapes(5, 3, "gru")):
        with pytest.raises(TypeError, match=r"Model\('gru'\)"):
            call()


def test_a_third_party_backend_without_a_name_is_named_after_its_class():
    from multirnn.backends.numpy_backend import NumpyBackend

    class Plain(multirnn.Backend):  # abstract: only the class attribute matters here
        pass

    class Sub(NumpyBackend):
        pass

    assert Plain.name == "Plain" and Sub.name == "numpy"  # an inherited name is kept


# --- the conformance suite says what the contract is when a backend takes no NumPy state ------------


def _own_state_only_backend(fails_anyway: bool = False) -> type:
    """The NumPy oracle with a state type of its own, refusing NumPy state as a framework would."""
    from multirnn.backends.numpy_backend import NumpyBackend

    class Own(np.ndarray):
        pass

    def own(state: tuple) -> tuple:
        if not all(isinstance(s, Own) for s in state):
            raise TypeError("unsupported operand type(s) for @: 'numpy.ndarray' and 'Own'")
        if fails_anyway:
            raise RuntimeError("a bug of its own")
        return state

    class OwnStateOnly(NumpyBackend):
        def init_state(self, batch_size, num_hiddens, dtype="float32"):
            return tuple(s.view(Own) for s in super().init_state(batch_size, num_hiddens, dtype))

        def forward(self, params, X, state):
            logits, new = super().forward(params, X, own(state))
            return logits, tuple(s.view(Own) for s in new)

        def loss_and_grads(self, params, X, Y, state):
            loss, grads, new = super().loss_and_grads(params, X, Y, own(state))
            return loss, grads, tuple(s.view(Own) for s in new)

    return OwnStateOnly


def test_conformance_names_the_state_contract_when_numpy_state_is_refused():
    from multirnn.testing import CONFORMANCE, run_conformance

    be = _own_state_only_backend()()
    checks = tuple(c for c in CONFORMANCE if str(c) in ("forward[float64,3,5]", "loss_and_grads[float32,1,1]",
                                                        "state_detached", "float32_step", "state_carry"))
    failures = dict(run_conformance(be, checks))
    assert sorted(failures) == ["float32_step", "forward[float64,3,5]", "loss_and_grads[float32,1,1]", "state_detached"]
    for message in failures.values():
        assert message.startswith("AssertionError: "), message
        assert "failed on a state given as NumPy arrays (TypeError: unsupported operand" in message, message
        assert "multirnn/backends/base.py" in message and "convert each entry on the way in" in message, message


def test_conformance_keeps_a_backends_own_error_when_its_own_state_fails_too():
    from multirnn.testing import CONFORMANCE, run_conformance

    be = _own_state_only_backend(fails_anyway=True)()
    check = next(c for c in CONFORMANCE if str(c) == "forward[float64,3,5]")
    own_error = "TypeError: unsupported operand type(s) for @: 'numpy.ndarray' and 'Own'"
    [(name, message)] = run_conformance(be, (check,))
    # the backend's own error, with where it was raised (this file, the backend's forward)
    assert name == str(check) and message.startswith(f"{own_error} (raised at {__file__}:"), message


def test_installed_code_includes_user_and_system_site_packages():
    """pip install --user and Debian's dist-packages were taken for the user's own code: the digest walked all of
    an installed framework's modules, and conformance errors pointed into them."""
    import site

    from multirnn.backends import is_library_file

    assert is_library_file(str(Path(site.getusersitepackages()) / "torch" / "nn" / "modules" / "module.py"))
    for entry in ("/usr/lib/python3/dist-packages", "/usr/local/lib/python3.11/site-packages"):
        if entry in sys.path:
            assert is_library_file(entry + "/numpy/__init__.py")


def test_the_oracles_install_hint_is_one_that_works():
    """It said "pip install multirnn", and multirnn is not on the package index."""
    from multirnn.backends import install_hint

    assert install_hint("numpy") == "pip install numpy"

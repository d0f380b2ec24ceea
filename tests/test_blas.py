"""multirnn.blas: NumPy's OpenBLAS named for child processes only where it fell back to pre-AVX2 kernels."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from multirnn import blas
from multirnn.compare import ISA_CAP_VARIABLES, machine_info
from multirnn.report import openblas_note


@pytest.fixture
def fresh(monkeypatch):
    """A process that has not decided yet, with neither variable set by the user."""
    monkeypatch.delenv("OPENBLAS_CORETYPE", raising=False)
    monkeypatch.delenv(blas.DETECTED_VARIABLE, raising=False)
    monkeypatch.delenv("MULTIRNN_OPENBLAS", raising=False)
    return monkeypatch


def test_a_generic_core_on_an_avx512_cpu_is_named_for_children(fresh):
    fresh.setattr(blas, "openblas_core", lambda: "Prescott")
    fresh.setattr(blas, "wanted_core", lambda: "SkylakeX")
    assert blas.name_openblas_core() == {"detected": "Prescott", "core": "SkylakeX"}
    assert os.environ["OPENBLAS_CORETYPE"] == "SkylakeX"
    # recorded as multirnn's choice, not as the user's ISA cap
    assert "OPENBLAS_CORETYPE" not in blas.user_environ(ISA_CAP_VARIABLES)
    info = machine_info()
    assert info["openblas"] == {"detected": "Prescott", "core": "SkylakeX"}
    assert "OPENBLAS_CORETYPE" not in info["isa_caps"]
    assert "SkylakeX kernels (it picked Prescott" in openblas_note(info)
    # a descendant (a worker, an xdist process) sees the same choice, and does not name it again
    assert blas.name_openblas_core() == {"detected": "Prescott", "core": "SkylakeX"}


@pytest.mark.parametrize(("detected", "wanted", "env"), [
    ("SkylakeX", "SkylakeX", {}),  # OpenBLAS knew the CPU
    ("Zen", "Haswell", {}),  # an AVX2 core already
    ("Prescott", None, {}),  # the CPU has no AVX2: Prescott is right
    (None, "SkylakeX", {}),  # no bundled OpenBLAS to ask
    ("Prescott", "SkylakeX", {"MULTIRNN_OPENBLAS": "default"}),  # opted out
    ("Prescott", "SkylakeX", {"OPENBLAS_CORETYPE": "Haswell"}),  # the user's own choice stands
])
def test_otherwise_openblas_is_left_alone(fresh, detected, wanted, env):
    fresh.setattr(blas, "openblas_core", lambda: detected)
    fresh.setattr(blas, "wanted_core", lambda: wanted)
    for k, v in env.items():
        fresh.setenv(k, v)
    assert blas.name_openblas_core() is None
    assert os.environ.get("OPENBLAS_CORETYPE") == env.get("OPENBLAS_CORETYPE")
    assert openblas_note(machine_info()) == ""
    if "OPENBLAS_CORETYPE" in env:  # a user's setting is an ISA cap of the run
        assert blas.user_environ(ISA_CAP_VARIABLES) == {"OPENBLAS_CORETYPE": "Haswell"}


def test_the_name_reaches_a_child_process_openblas():
    """What the mechanism rests on: a child's OpenBLAS runs the kernels named in OPENBLAS_CORETYPE."""
    if blas.openblas_core() is None:
        pytest.skip("NumPy here has no bundled OpenBLAS that reports its core")
    wanted = blas.wanted_core()
    if wanted is None:
        pytest.skip("this CPU has no AVX2: no core to name")
    code = "import json; from multirnn import blas; print(json.dumps(blas.openblas_core()))"
    env = {**os.environ, "OPENBLAS_CORETYPE": wanted}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout
    assert json.loads(out.strip().splitlines()[-1]) == wanted


def test_training_numpy_in_a_process_whose_openblas_runs_generic_kernels_warns_once(fresh):
    """A script's own process loaded OpenBLAS before anyone could name its core: the NumPy backend says so
    (once), and how to fix it; nothing is said where the core is named, or with MULTIRNN_OPENBLAS=default."""
    import warnings

    from multirnn import get_backend
    from multirnn.backends import numpy_backend

    fresh.setattr(blas, "openblas_core", lambda: "Prescott")
    fresh.setattr(blas, "wanted_core", lambda: "SkylakeX")
    fresh.setattr(numpy_backend, "_BLAS_CHECKED", False)
    with pytest.warns(RuntimeWarning, match="generic Prescott kernels .* Set OPENBLAS_CORETYPE=SkylakeX before "
                                            "Python starts") as caught:
        get_backend("numpy")
    assert caught[0].filename == __file__  # points at the caller's get_backend
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        get_backend("numpy")  # once per process
        fresh.setattr(numpy_backend, "_BLAS_CHECKED", False)
        fresh.setenv("MULTIRNN_OPENBLAS", "default")
        get_backend("numpy")
        fresh.setattr(numpy_backend, "_BLAS_CHECKED", False)
        fresh.delenv("MULTIRNN_OPENBLAS")
        fresh.setenv("OPENBLAS_CORETYPE", "Haswell")  # the user's own choice (or multirnn's, for a worker)
        get_backend("numpy")
        fresh.setattr(numpy_backend, "_BLAS_CHECKED", False)
        fresh.delenv("OPENBLAS_CORETYPE")
        fresh.setattr(blas, "openblas_core", lambda: "SkylakeX")  # OpenBLAS knew the CPU
        get_backend("numpy")


@pytest.mark.parametrize(("detected", "wanted", "env", "named"), [
    ("Prescott", "SkylakeX", {}, True),  # MXNet's OpenBLAS 0.3.13 on an Emerald Rapids
    ("Haswell", "SkylakeX", {}, False),  # an AVX2 core already
    ("Prescott", None, {}, False),  # the CPU has no AVX2
    (None, "SkylakeX", {}, False),  # the library could not be asked
    ("Prescott", "SkylakeX", {"MULTIRNN_OPENBLAS": "default"}, False),  # opted out
    ("Prescott", "SkylakeX", {"OPENBLAS_CORETYPE": "Haswell"}, False),  # named already (user or ancestor)
])
def test_a_framework_openblas_is_named_only_while_it_loads(fresh, tmp_path, detected, wanted, env, named):
    lib = tmp_path / "libopenblas.so.0"
    lib.write_bytes(b"")
    fresh.setattr(blas, "library_core", lambda path: detected)
    fresh.setattr(blas, "wanted_core", lambda: wanted)
    for k, v in env.items():
        fresh.setenv(k, v)
    with blas.core_named_while_loading(lib) as chosen:
        inside = os.environ.get("OPENBLAS_CORETYPE")
    assert chosen == ({"detected": detected, "core": wanted} if named else None)
    assert inside == (wanted if named else env.get("OPENBLAS_CORETYPE"))
    # after the import, children keep their own NumPy's choice
    assert os.environ.get("OPENBLAS_CORETYPE") == env.get("OPENBLAS_CORETYPE")


def test_a_missing_library_is_not_probed(fresh, tmp_path):
    fresh.setattr(blas, "library_core", lambda path: pytest.fail("probed a library that is not there"))
    fresh.setattr(blas, "wanted_core", lambda: "SkylakeX")
    for path in (None, tmp_path / "absent.so"):
        with blas.core_named_while_loading(path) as chosen:
            assert chosen is None


def test_library_core_asks_a_real_openblas_in_a_child_process():
    """The probe itself, on NumPy's own OpenBLAS: a child with the same environment picks the same core."""
    import glob
    from pathlib import Path

    import numpy as np

    libs = sorted(glob.glob(str(Path(np.__file__).resolve().parent.parent / "numpy.libs" / "*openblas*.so*")))
    if not libs or blas.openblas_core() is None:
        pytest.skip("NumPy here has no bundled OpenBLAS that reports its core")
    assert blas.library_core(libs[0]) == blas.openblas_core()
    assert blas.library_core(Path(libs[0]).parent / "not-a-library.so") is None

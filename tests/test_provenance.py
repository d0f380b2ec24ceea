"""Which code made a result: ``multirnn.provenance.code_version`` changes with any file of the
package, and a resumed compare run or sweep refuses results of other code instead of mixing them."""

from __future__ import annotations

import json

import pytest

from multirnn import __version__, provenance, sweep_spec
from multirnn import compare as compare_cli
from multirnn import sweep as sweep_cli
from tests.test_reliability import compare
from tests.test_sweep import sweep


@pytest.fixture
def package(tmp_path, monkeypatch):
    """A stand-in package folder that code_version reads instead of multirnn's own."""
    root = tmp_path / "pkg"
    (root / "backends").mkdir(parents=True)
    (root / "a.py").write_text("x = 1\n")
    (root / "backends" / "b.py").write_text("y = 2\n")
    monkeypatch.setattr(provenance, "_PACKAGE", root)
    provenance.code_version.cache_clear()
    yield root
    provenance.code_version.cache_clear()


def fresh() -> str:
    provenance.code_version.cache_clear()
    return provenance.code_version()


def test_the_version_names_the_release_and_a_digest(package):
    v = fresh()
    assert v.startswith(f"{__version__}+") and len(v.split("+")[1]) == 12
    assert fresh() == v  # the same files, the same version


@pytest.mark.parametrize("change", [
    lambda root: (root / "a.py").write_text("x = 2\n"),  # one line of a module
    lambda root: (root / "backends" / "c.py").write_text(""),  # a new module
    lambda root: (root / "backends" / "b.py").rename(root / "b.py"),  # a module moved
])
def test_any_change_to_the_package_makes_another_version(package, change):
    before = fresh()
    change(package)
    assert fresh() != before


def test_compiled_caches_do_not_count(package):
    before = fresh()
    (package / "__pycache__").mkdir()
    (package / "__pycache__" / "a.cpython-311.pyc").write_bytes(b"\0\1")
    (package / "stray.pyc").write_bytes(b"\0")
    assert fresh() == before


def test_the_real_package_has_one_version_per_process():
    assert provenance.code_version() == provenance.code_version()
    assert provenance.code_version().startswith(__version__ + "+")


TINY = ["--epochs", "2", "--hidden", "8", "--max-tokens", "600", "--batch-size", "4", "--num-steps", "5",
        "--quiet", "--no-plot"]


def test_compare_records_the_code_and_resume_refuses_another(tmp_path, capsys):
    out = tmp_path / "run"
    args = ["--backends", "numpy,tests.zoo:OracleCopy", *TINY, "--out", str(out)]
    # whole runs in their own processes (they install signal handlers); refusals come before that
    first = compare(args)
    assert first.returncode == 0, first.stderr
    results = json.loads((out / "results.json").read_text())
    assert results["code_version"] == provenance.code_version()
    assert f"multirnn {provenance.code_version()}" in (out / "report.md").read_text()
    again = compare([*args, "--resume"])
    assert again.returncode == 0, again.stderr  # the same code: resumed
    results["code_version"] = "0.1.0+000000000000"
    (out / "results.json").write_text(json.dumps(results))
    assert compare_cli.main([*args, "--resume"]) == 2
    err = capsys.readouterr().err
    assert (f"made by other multirnn code (0.1.0+000000000000; now {provenance.code_version()}), so its rows cannot "
            "be kept beside new ones") in err, err
    del results["code_version"]  # a run from before code versions were recorded
    (out / "results.json").write_text(json.dumps(results))
    assert compare_cli.main([*args, "--resume"]) == 2
    assert "from before code versions were recorded" in capsys.readouterr().err


def test_a_sweep_of_other_code_makes_other_cells_and_says_so(tmp_path, capsys, monkeypatch):
    out = tmp_path / "sweep"
    args = ["--backends", "numpy,tests.zoo:OracleCopy", *TINY, "--out", str(out)]
    first = sweep(args)
    assert first.returncode == 0, first.stderr
    spec = json.loads((out / "spec.json").read_text())
    assert spec["code_version"] == provenance.code_version()
    for module in (sweep_cli, sweep_spec):  # both read the name they imported
        monkeypatch.setattr(module, "code_version", lambda: "9.9.9+ffffffffffff")
    assert sweep_cli.main([*args, "--resume"]) == 2
    err = capsys.readouterr().err
    assert f"used other settings: multirnn's code {provenance.code_version()} (now 9.9.9+ffffffffffff)" in err, err

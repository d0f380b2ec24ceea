"""Which code made a result: ``multirnn.provenance.code_version`` changes with any file of the
package, and a resumed compare run or sweep refuses results of other code instead of mixing them."""

from __future__ import annotations

import hashlib
import importlib
import json
import os
import sys

import pytest

import multirnn
from multirnn import __version__, provenance, sweep_spec
from multirnn import compare as compare_cli
from multirnn import sweep as sweep_cli
from tests.test_reliability import ROOT, compare
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
    assert (f"holds a sweep of other code or files: multirnn's code {provenance.code_version()} (now "
            "9.9.9+ffffffffffff); its cells cannot be reused: use --overwrite") in err, err


def test_resume_refuses_a_changed_text_and_retrains_a_changed_third_party_backend(tmp_path, capsys):
    """A --text or --eval-text file edited in place, or a backend module's file, made a resume keep rows
    of the old file beside new ones (false disagreements, or a bug added to your backend passing)."""
    book, other = tmp_path / "book.txt", tmp_path / "other.txt"
    text = multirnn.bundled_text_path("timemachine").read_text()[:20000]
    book.write_text(text)
    other.write_text(text[:5000])
    module = tmp_path / "mybackend.py"
    module.write_text("from tests.zoo import OracleCopy as Mine\n")
    out = tmp_path / "run"
    args = ["--backends", "numpy,mybackend:Mine,tests.zoo:OracleCopy2", *TINY, "--text", str(book), "--eval-text", str(other),
            "--out", str(out)]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), str(ROOT)])}
    first = compare(args, env=env)
    assert first.returncode == 0, first.stderr
    options = json.loads((out / "results.json").read_text())["options"]
    assert options["text_sha256"] == hashlib.sha256(book.read_bytes()).hexdigest()
    assert set(options["backend_sources"]) == {"mybackend:Mine", "tests.zoo:OracleCopy2"}
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.name != ".lock"}  # the lock: held, rewritten
    for path in (book, other):
        saved = path.read_text()
        path.write_text(saved.replace("Time", "Tyme"))
        refused = compare([*args, "--resume"], env=env)
        flag = "--text" if path == book else "--eval-text"
        assert refused.returncode == 2 and f"--resume: {flag} {str(path)!r} changed since the earlier run (its contents " \
            "differ), so its rows cannot be kept beside new ones; start a new run" in refused.stderr, refused.stderr
        assert {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.name != ".lock"} == before  # no .work/ either
        path.write_text(saved)
    mtimes = {p.name: p.stat().st_mtime_ns for p in (out / "backends").glob("*.json")}
    module.write_text("from tests.zoo import OracleCopy as Mine  # edited\n")
    again = compare([*args, "--resume"], env=env)
    assert again.returncode == 0, again.stderr
    assert "the source of mybackend:Mine changed since the earlier run: it trains again" in again.stdout + again.stderr
    now = {p.name: p.stat().st_mtime_ns for p in (out / "backends").glob("*.json")}
    # the changed row trained again (and the oracle, for the checkpoints it restarts from); the other was kept
    assert now["tests_zoo_OracleCopy2.json"] == mtimes["tests_zoo_OracleCopy2.json"]
    assert now["mybackend_Mine.json"] != mtimes["mybackend_Mine.json"]


def test_a_third_party_backend_s_digest_follows_its_own_imports(tmp_path, monkeypatch):
    """A subclass whose base (with the bug) lives in another file: editing that file changed nothing the
    digest read, so a resume and a sweep kept the old results."""
    from multirnn.backends import source_digest

    (tmp_path / "base_impl.py").write_text("from tests.zoo import OracleCopy as MyBackend\n")
    (tmp_path / "helpers.py").write_text("SCALE = 1\n")
    (tmp_path / "sub.py").write_text("import helpers\nfrom base_impl import MyBackend\n\nclass Sub(MyBackend):\n    pass\n")
    monkeypatch.syspath_prepend(str(tmp_path))

    def digest() -> str:
        for name in ("sub", "base_impl", "helpers"):
            sys.modules.pop(name, None)
        return source_digest("sub:Sub")

    first = digest()
    assert first is not None and source_digest("tests.zoo:OracleCopy") is not None
    (tmp_path / "base_impl.py").write_text("from tests.zoo import OracleCopy as MyBackend  # edited\n")
    second = digest()
    (tmp_path / "helpers.py").write_text("SCALE = 2\n")
    third = digest()
    assert len({first, second, third}) == 3
    assert digest() == third  # the same files, the same digest


def test_the_digest_is_of_contents_and_module_names_not_of_where_the_project_lies(tmp_path, monkeypatch):
    """Absolute paths were hashed: the same project in another folder (a CI workspace, a moved checkout) had
    another digest, and a sweep's --resume was refused for a changed backend that had not changed."""
    from multirnn.backends import source_digest

    digests = []
    for where in ("a", "b"):
        folder = tmp_path / where
        folder.mkdir()
        (folder / "helpers_mv.py").write_text("SCALE = 1\n")
        (folder / "moved.py").write_text("import helpers_mv\nfrom tests.zoo import OracleCopy as Mine\n")
        monkeypatch.syspath_prepend(str(folder))
        for name in ("moved", "helpers_mv"):
            sys.modules.pop(name, None)
        importlib.invalidate_caches()
        digests.append(source_digest("moved:Mine"))
        monkeypatch.undo()  # the next folder alone on the path
    assert digests[0] is not None and digests[0] == digests[1]


def test_the_digest_neither_imports_the_backend_nor_ends_on_its_sys_exit(tmp_path, monkeypatch):
    """An entry point in the default list was imported in compare's own process for its digest: a module
    that calls sys.exit() on import ended compare with its status."""
    from multirnn.backends import source_digest

    (tmp_path / "exits_on_import.py").write_text("import sys\nsys.exit(3)\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert source_digest("exits_on_import:Backend") is not None  # its source is read, not run
    assert "exits_on_import" not in sys.modules

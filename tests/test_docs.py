"""The README's two opening commands are exactly what CI runs, so a green CI proves them."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def readme_commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    block = re.search(r"```(?:bash|sh)?\n(.*?)```", text, re.S)
    assert block, "README.md has no code block"
    return [ln for ln in block.group(1).splitlines() if ln.strip() and not ln.lstrip().startswith("#")]


def test_readme_opens_with_two_commands_that_ci_runs():
    commands = readme_commands()
    assert len(commands) == 2, commands
    assert commands[0].endswith("python -m multirnn.compare")
    assert "pytest" in commands[1] and "torch==2.13.0" in commands[1]
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    for command in commands:
        assert command in ci, f"{command!r} is not in .ci/run"


def test_the_python_api_snippet_runs_and_prints_what_it_promises():
    import subprocess
    import sys

    from tests.conftest import require_backend

    require_backend("torch")
    text = (ROOT / "README.md").read_text()
    snippet = next(b for b in re.findall(r"```python\n(.*?)```", text, re.S) if b.startswith("import multirnn"))
    proc = subprocess.run([sys.executable, "-c", snippet], capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    assert lines[0].startswith("[") and "numpy" in lines[0]
    assert re.match(r"perplexity after 10 epochs: \d+\.\d\d$", lines[1]), lines
    assert lines[2].startswith("time traveller") and len(lines[2]) == len("time traveller") + 30


def test_no_placeholder_is_left_in_the_docs():
    for doc in ("README.md", "DEVELOPERS.md", "benchmarks/README.md", "benchmarks/PROFILES.md"):
        text = (ROOT / doc).read_text()
        assert "⟪" not in text and "TBD" not in text, doc


def test_the_readme_example_backend_passes_compare_and_every_conformance_check(tmp_path):
    """The 'Checking your own backend' example, as printed: no stale contract in the docs."""
    import subprocess
    import sys

    from tests.conftest import require_backend

    require_backend("torch")
    text = (ROOT / "README.md").read_text()
    example = next(b for b in re.findall(r"```python\n(.*?)```", text, re.S) if "class MyBackend(Backend)" in b)
    (tmp_path / "mymodule.py").write_text(example)
    check = ("from multirnn.testing import run_conformance\nfrom mymodule import MyBackend\n"
             "for mode in ('eager', 'fast'):\n    failures = run_conformance(MyBackend(mode=mode))\n"
             "    assert failures == [], failures\nprint('conformant')\n")
    env = {**__import__("os").environ, "PYTHONPATH": f"{tmp_path}:{ROOT}"}
    proc = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True, timeout=600, cwd=tmp_path, env=env)
    assert proc.returncode == 0 and "conformant" in proc.stdout, proc.stdout[-3000:] + proc.stderr[-3000:]
    proc = subprocess.run([sys.executable, "-m", "multirnn.compare", "--backends", "numpy,mymodule:MyBackend",
                           "--epochs", "2", "--hidden", "16", "--max-tokens", "3000", "--out", str(tmp_path / "run"),
                           "--quiet", "--no-plot"], capture_output=True, text=True, timeout=600, cwd=tmp_path, env=env)
    assert proc.returncode == 0 and "mymodule:MyBackend agrees" in proc.stdout, proc.stdout[-3000:] + proc.stderr

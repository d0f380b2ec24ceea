"""The sweep's spec: compare's options as comma lists (or a TOML file), expanded into cells.

A *configuration* is one value of every swept option; with a seed it is one ``compare`` run, whose
rows (backend, impl) ``compare.make_plan`` decides and validates -- the sweep never re-implements
that. A *cell* is one row of one (configuration, seed), optionally repeated: one training run in
one worker process. Its id is a hash of everything that decides its result (the worker task minus
file paths, the texts' contents, multirnn's code version and a third-party backend's source file, the
id of the run it is re-anchored to), so a rerun or a resume finds it again and a changed spec or code
never reuses a stale result.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import itertools
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import compare, verdict
from .config import ED1_ONLY, PRESETS
from .provenance import code_version

# compare options the sweep does not take as they are: it has its own (out, resume, ...), --seed
# becomes --seeds, and --list-backends/--version/--help mean nothing here.
NOT_FROM_COMPARE = {"help", "version", "list_backends", "out", "overwrite", "resume", "quiet", "no_plot",
                    "keep_checkpoints", "stall_timeout", "seed", "jobs"}
# compare options that keep compare's meaning: the rows of every configuration (already comma
# lists there), and repeatable prompts.
ROW_OPTIONS = ("backends", "impl")
PASS_THROUGH = ("prefix",)
# A spec this large is a typo, not a plan (each cell is a training run).
MAX_CELLS = 100_000


class SpecError(Exception):
    """An invalid spec: reported as one line on stderr, exit status 2, nothing written."""


def compare_actions() -> list[argparse.Action]:
    """compare's options that the sweep accepts (read from compare's own parser, so new ones follow)."""
    return [a for a in compare.build_parser()._actions
            if a.option_strings and a.dest not in NOT_FROM_COMPARE and a.nargs != 0]


def swept_dests() -> list[str]:
    """The options whose comma lists multiply into configurations, in compare's order."""
    return [a.dest for a in compare_actions() if a.dest not in ROW_OPTIONS + PASS_THROUGH]


def parse_seeds(text: str | int | list[Any]) -> list[int]:
    """``"0-4,7"`` -> [0, 1, 2, 3, 4, 7] (also an int or a TOML list of ints and ranges).

    Raises:
        SpecError: anything else, a negative seed or a descending range.
    """
    parts = text if isinstance(text, list) else [text]
    seeds: list[int] = []
    for part in parts:
        for item in str(part).split(","):
            item = item.strip()
            m = re.fullmatch(r"(\d+)(?:\s*-\s*(\d+))?", item)
            if not m:
                raise SpecError(f"--seeds {text!r}: expected non-negative integers and ranges like 0-4,7")
            lo, hi = int(m.group(1)), int(m.group(2) or m.group(1))
            if hi < lo:
                raise SpecError(f"--seeds {item!r}: the range goes down")
            if hi - lo >= MAX_CELLS:
                raise SpecError(f"--seeds {item!r}: more than {MAX_CELLS:,} seeds")
            seeds += range(lo, hi + 1)
    if not seeds:
        raise SpecError("--seeds is empty")
    return list(dict.fromkeys(seeds))


def seeds_text(seeds: list[int]) -> str:
    """[0, 1, 2, 7] -> "0-2,7" (as --seeds takes them)."""
    runs: list[list[int]] = []
    for seed in seeds:
        if runs and seed == runs[-1][1] + 1:
            runs[-1][1] = seed
        else:
            runs.append([seed, seed])
    return ",".join(str(a) if a == b else f"{a}-{b}" for a, b in runs)


def split_values(dest: str, value: Any) -> list[str]:
    """One option's values: a comma list (CLI), or a TOML scalar or array."""
    items = value if isinstance(value, list) else str(value).split(",")
    out = [str(v).strip() for v in items]
    if not any(out):
        raise SpecError(f"--{dest.replace('_', '-')} is empty")
    if "" in out:  # '32,,64': a value left out by mistake is not quietly skipped
        raise SpecError(f"--{dest.replace('_', '-')} {value!r} has an empty item (a doubled, leading or trailing comma)")
    return list(dict.fromkeys(out))


@dataclass
class SpecFile:
    """The options of a ``--spec`` file, keyed by argparse dest, and how the file spells each key."""

    path: str
    values: dict[str, Any]
    keys: dict[str, str]  # dest -> the key as written ("batch-size" or "batch_size")

    def error(self, dest: str, reason: str) -> SpecError:
        """A bad value, named where the user wrote it: "--spec 'sweep.toml': epochs = 0: expected a positive integer"."""
        return SpecError(f"--spec {self.path!r}: {self.keys[dest]} = {toml_text(self.values[dest])}: {reason}")


def toml_text(value: Any) -> str:
    """A TOML value as it is written in the file (0, "a", [16, -3], true)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, list):
        return "[" + ", ".join(toml_text(v) for v in value) + "]"
    return str(value)  # numbers (inf and nan as TOML spells them), dates


def read_toml(path: str, parser: argparse.ArgumentParser) -> SpecFile:
    """The options of a ``--spec`` file (``batch-size`` and ``batch_size`` alike).

    Raises:
        SpecError: unreadable file, bad TOML, an unknown key.
    """
    try:
        import tomllib  # Python 3.11+
    except ModuleNotFoundError:  # Python 3.10: the same parser, packaged
        try:
            import tomli as tomllib
        except ModuleNotFoundError:
            raise SpecError("--spec needs Python 3.11 or later (tomllib), or 'pip install tomli'") from None
    try:
        data = tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise SpecError(f"--spec {path!r}: cannot read it: {exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise SpecError(f"--spec {path!r}: not valid TOML: {exc}") from None
    known = {a.dest: a for a in parser._actions if a.option_strings}
    out = SpecFile(path, {}, {})
    for key, value in data.items():
        dest = key.replace("-", "_")
        if dest not in known or dest in ("spec", "help"):
            raise SpecError(f"--spec {path!r}: unknown key {key!r} (keys are the command-line options, "
                            "e.g. backends, dtype, hidden, seeds)")
        if dest in ("resume", "overwrite"):  # in a file, every run of it would clear (or insist on) its folder
            raise SpecError(f"--spec {path!r}: {key} is for the command line, one run at a time: remove it from "
                            f"the file and add --{key.replace('_', '-')} to the command")
        if isinstance(value, dict):
            raise SpecError(f"--spec {path!r}: {key} must be a value or a list of values, not a table")
        if dest in out.values:  # batch_size and batch-size: one would silently win
            raise SpecError(f"--spec {path!r}: {out.keys[dest]!r} and {key!r} are the same option; give it once")
        out.values[dest], out.keys[dest] = value, key
    return out


@dataclass(frozen=True)
class Configuration:
    """One value of every swept option (the seed aside)."""

    index: int
    values: tuple[tuple[str, str], ...]  # (dest, value) of every option the spec gives, compare's order
    label: str  # the options that vary across the sweep, e.g. "dtype=float64 hidden=128" (the only one: all it sets)
    folder: str = ""  # its groups' folder name stem, unique in the sweep (set by expand)

    @property
    def key(self) -> str:
        return _digest({"values": list(self.values)})[:10]

    def argv(self) -> list[str]:
        return [x for dest, value in self.values for x in (f"--{dest.replace('_', '-')}", value)]


@dataclass(eq=False)
class Group:
    """One (configuration, seed): one ``compare`` run's worth of rows, planned by compare itself."""

    configuration: Configuration
    seed: int
    plan: compare.Plan
    argv: list[str]

    @property
    def key(self) -> str:
        return f"{self.configuration.key}-s{self.seed}"

    @property
    def folder(self) -> str:
        """A readable folder name, unique within the sweep (labels differ in some value)."""
        return f"{self.configuration.folder or _safe(self.configuration.label)}-s{self.seed}"


@dataclass(eq=False)
class Cell:
    """One training run: a row of a group, repeated ``repeat`` times for timing."""

    id: str
    group: Group
    backend: str
    impl: str
    label: str  # the row's name (compare.row_label)
    index: int  # position among the group's rows (it picks --init independent's weights, as in compare)
    repeat: int
    anchor: str | None  # id of the cell whose checkpoints it restarts from (the oracle's)
    saves_checkpoints: bool
    spec: dict[str, Any]  # the canonical spec its id hashes

    def task(self, out_path: str, data_path: str, eval_path: str | None, checkpoint_dir: str | None,
             anchor_dir: str | None) -> Any:
        """The worker task (compare's own Plan.task), with these file locations."""
        return self.group.plan.task(self.backend, self.impl, out_path, data_path, eval_path, self.index,
                                    checkpoint_dir=checkpoint_dir, anchor_dir=anchor_dir)


def _digest(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


# WorkerTask fields that are places, not what is computed: left out of a cell's identity.
_PATH_FIELDS = {"out_path", "data_path", "eval_path", "checkpoint_dir", "anchor_dir", "parent_pid", "sys_path", "label"}


def _safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.=-]+", "_", text).strip("_")[:80] or "cell"


def cells_of(group: Group, repeats: int) -> list[Cell]:
    """The group's cells, in compare's row order; the first row anchors the others when
    re-anchored checks are on (the oracle when numpy is among the backends, as in compare)."""
    plan = group.plan
    # The code too: a cell of older code is not this code's result (its id is found again only by the same
    # code); the texts' digests are compare's (None: the bundled default text, which the code covers).
    texts = {"text": plan.options["text_sha256"], "eval_text": plan.options["eval_text_sha256"],
             "encoding": plan.options["encoding"], "code": code_version()}
    cells: list[Cell] = []
    anchor_id: str | None = None
    for index, (backend, impl) in enumerate(plan.pairs):
        for repeat in range(repeats):
            task = dataclasses.asdict(plan.task(backend, impl, "", "", None, index))
            is_anchor = bool(plan.lock_epochs) and index == 0 and repeat == 0
            oracle_repeat = index == 0 and backend == verdict.ORACLE  # the oracle never restarts from anyone
            anchor = None if is_anchor or oracle_repeat or not plan.lock_epochs else anchor_id
            spec = {**{k: v for k, v in task.items() if k not in _PATH_FIELDS}, **texts, "repeat": repeat,
                    "saves_checkpoints": is_anchor, "anchor": anchor}
            if source := plan.options["backend_sources"].get(backend):  # a third-party backend's own file
                spec["backend_source"] = source
            cell_id = f"{_safe(task['name'])}-{_digest(spec)[:16]}"
            cells.append(Cell(cell_id, group, backend, impl, task["name"], index, repeat, anchor, is_anchor, spec))
            if is_anchor:
                anchor_id = cell_id
    return cells


def effective_values(values: tuple[tuple[str, str], ...]) -> tuple[tuple[str, str], ...]:
    """A configuration's values without those it ignores: its preset's (ed. 2: --sampling, --max-tokens), and
    --init-seeds where its --init is not framework (compare refuses the pair; crossed in a sweep, it means the
    framework configurations' seeds)."""
    preset = dict(values).get("preset", compare.build_parser().get_default("preset"))
    if preset in PRESETS and PRESETS[preset].protocol == "d2l-ed2":
        values = tuple((d, v) for d, v in values if d not in ED1_ONLY)
    if dict(values).get("init", compare.build_parser().get_default("init")) != "framework":
        values = tuple((d, v) for d, v in values if d != "init_seeds")
    return values


def refuse_unused_init_seeds(dims: dict[str, list[str]]) -> str | None:
    """--init-seeds where no configuration has --init framework: refused in compare's words. Where only some
    have it, a note saying the others ignore it (None where there is nothing to say).

    Raises:
        SpecError: compare's refusal.
    """
    if "init_seeds" not in dims:
        return None
    inits = dims.get("init", [compare.build_parser().get_default("init")])
    if "framework" not in inits:
        raise SpecError(f"--init-seeds applies to --init framework only (--init {','.join(inits)} trains one seed "
                        "per row)")
    others = [i for i in inits if i != "framework"]
    return (f"--init-seeds applies to the --init framework configurations; --init {', '.join(others)} "
            f"train{'s' if len(others) == 1 else ''} one seed per row" if others else None)


def _is_ed2(preset: str) -> bool:
    return preset in PRESETS and PRESETS[preset].protocol == "d2l-ed2"


def refuse_ed1_options(dims: dict[str, list[str]]) -> None:
    """--sampling or --max-tokens given when every configuration's preset is ed. 2: no configuration
    would use them, so they are refused in compare's own words, as compare refuses them. (Crossed
    with an ed. 1 preset they mean something for its configurations: :func:`ignored_by_presets` notes it.)

    Raises:
        SpecError: compare's refusal.
    """
    presets = dims.get("preset", [compare.build_parser().get_default("preset")])
    given = {d: dims[d][0] for d in ED1_ONLY if d in dims}
    if not given or not all(_is_ed2(p) for p in presets):
        return
    try:
        compare._refuse_ed1_options(argparse.Namespace(preset=presets[0], **{d: given.get(d) for d in ED1_ONLY}))
    except compare.UsageError as exc:
        raise SpecError(str(exc)) from None


def ignored_by_presets(dims: dict[str, list[str]]) -> str | None:
    """A note when some swept preset ignores given values (--sampling, --max-tokens), else None;
    swept ones also make its configurations run once, not once per value."""
    ed2 = [p for p in dims.get("preset", []) if _is_ed2(p)]
    given = [f"--{d.replace('_', '-')}" for d in ED1_ONLY if d in dims]
    swept = [f"--{d.replace('_', '-')}" for d in ED1_ONLY if len(dims.get(d, [])) > 1]
    if not ed2 or not given:
        return None
    note = f"--preset {', '.join(ed2)} ignores {' and '.join(given)} (shuffled fixed windows)"
    return note + (f": its configurations run once, not once per {' or '.join(swept)} value" if swept else "")


def single_label(values: tuple[tuple[str, str], ...]) -> str:
    """The label of a sweep's only configuration: its own settings ("all" read like --impl all)."""
    return " ".join(f"{d.replace('_', '-')}={v}" for d, v in values) or "default settings"


def expand(dims: dict[str, list[str]], fixed: list[str], seeds: list[int], repeats: int) -> tuple[
        list[Configuration], list[Group], list[Cell]]:
    """Every configuration, every (configuration, seed) planned and validated by compare, every cell.

    Args:
        dims: swept option -> its values (compare's order of options).
        fixed: compare arguments common to every configuration (--backends, --impl, --prefix).
        seeds: the seeds.
        repeats: runs of every row per (configuration, seed).

    Raises:
        SpecError: the first invalid value, naming the configuration it was found in.
    """
    names = list(dims)
    varying = [d for d in names if len(dims[d]) > 1]
    total = 1
    for values in dims.values():
        total *= len(values)
    if total * len(seeds) * repeats > MAX_CELLS:
        raise SpecError(f"the spec makes over {MAX_CELLS:,} runs; narrow it")
    configurations, seen = [], set()
    for combo in itertools.product(*(dims[d] for d in names)):
        values = effective_values(tuple(zip(names, combo)))
        if values in seen:  # an ed. 2 configuration that differed only in a value ed. 2 ignores
            continue
        seen.add(values)
        label = " ".join(f"{d.replace('_', '-')}={v}" for d, v in values if d in varying)
        configurations.append(Configuration(len(configurations), values, label))
    if len(configurations) == 1:  # nothing varies: name it by what it is
        configurations[0] = dataclasses.replace(configurations[0], label=single_label(configurations[0].values))
    # Folder names: the label made safe for a path, and where two labels became the same name (paths whose
    # separators were replaced, a long label cut short) each also the configuration's own key.
    stems = [_safe(c.label) for c in configurations]
    taken = {stem for stem in stems if stems.count(stem) > 1}
    configurations = [dataclasses.replace(c, folder=f"{stem}-{c.key}" if stem in taken else stem)
                      for c, stem in zip(configurations, stems)]
    groups, cells = [], []
    parser = compare.build_parser()
    for conf in configurations:
        for seed in seeds:
            argv = [*fixed, *conf.argv(), "--seed", str(seed)]
            try:
                plan = compare.make_plan(parser.parse_args(argv), argv)
            except compare.UsageError as exc:
                where = f" (configuration {conf.label}, seed {seed})" if len(configurations) > 1 else ""
                raise SpecError(f"{exc}{where}") from None
            group = Group(conf, seed, plan, argv)
            groups.append(group)
            cells += cells_of(group, repeats)
    if len(cells) > MAX_CELLS:
        raise SpecError(f"the spec makes {len(cells):,} runs (at most {MAX_CELLS:,}); narrow it")
    return configurations, groups, cells


def run_order(cells: list[Cell]) -> list[Cell]:
    """Anchors first (everything else waits for their checkpoints), then the rest in spec order."""
    return [c for c in cells if c.saves_checkpoints] + [c for c in cells if not c.saves_checkpoints]

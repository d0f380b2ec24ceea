"""The benchmark report's 80 % verdict: met, ruled out by a framework's own GEMM kernels, or just not met."""

from __future__ import annotations

import time

import numpy as np
import pytest

from benchmarks.report import (
    ladders_text,
    legend,
    main_table,
    scaling_table,
    target_verdict,
    window_roofline,
    with_work_share,
)
from tests.conftest import require_backend

# Floor: 1120 tokens per minibatch in 7.5 ms (5.5 ms serial chain at the best rate + 2.0 ms batched
# at the big-GEMM rate, 200k tokens/s x 1 MFLOP per token = 200 GFLOP/s).
FLOOR = {"floor_tokens_per_sec": 1120 / 7.5e-3, "serial_seconds": 5.5e-3, "batched_seconds": 2.0e-3,
         "roofline_tokens_per_sec": 200_000.0, "flops_per_token": 1e6,
         "chains": [{"library": "torch", "seconds": 5.5e-3}, {"library": "slowlib", "seconds": 11.0e-3},
                    {"library": "oklib", "seconds": 6.0e-3},
                    {"library": "slowgemm", "seconds": 6.0e-3, "gradient_gflops": 50.0},
                    {"library": "fastgemm", "seconds": 6.0e-3, "gradient_gflops": 400.0}]}


def point(tokens_per_sec: float) -> dict:
    return {"median": tokens_per_sec, "tokens_per_sec": [tokens_per_sec], "min": tokens_per_sec, "max": tokens_per_sec}


def test_met_at_80_percent_of_the_floor() -> None:
    assert target_verdict(point(0.81 * FLOOR["floor_tokens_per_sec"]), FLOOR, "torch") == "met"


def test_own_chain_kernel_rules_the_target_out() -> None:
    # slowlib: 11 + 2 = 13 ms per minibatch at best -> 7.5 / 13 = 58 % of the floor.
    # slowlib's gradient-GEMM rate was not measured (results from before it was): the chain alone.
    assert target_verdict(point(50_000), FLOOR, "slowlib") == "unreachable: own chain kernel allows 58%"


def test_own_batched_gemm_rate_rules_the_target_out() -> None:
    # slowgemm's chain alone would allow 94 %, but its gradient GEMM runs at 50 of the big GEMM's
    # 200 GFLOP/s: 6 + 2 x 4 = 14 ms -> 7.5 / 14 = 54 %.
    assert target_verdict(point(50_000), FLOOR, "slowgemm") == "unreachable: own GEMM kernels allow 54%"
    # A gradient GEMM faster than the big GEMM counts at the big GEMM's rate (the floor's), not faster.
    assert target_verdict(point(50_000), FLOOR, "fastgemm") == "not met (33.5%)"


def test_output_layer_gemms_count_at_their_measured_time() -> None:
    # thinout: chain 6 ms and a gradient GEMM as fast as the big one (2 ms batched at best: 7.5 / 8 =
    # 94 % without the output layer), but of the 2 ms batched the output layer's 0.2 GFLOP (1 ms at
    # 200 GFLOP/s) measured 4 ms as three thin GEMMs: 6 + 4 + (2 - 1) = 11 ms -> 7.5 / 11 = 68 %.
    f = {**FLOOR, "output_flops": 0.2e9,
         "chains": [*FLOOR["chains"], {"library": "thinout", "seconds": 6.0e-3, "gradient_gflops": 200.0,
                                       "output_seconds": 4.0e-3}]}
    assert target_verdict(point(50_000), f, "thinout") == "unreachable: own GEMM kernels allow 68%"
    # Without the measured output time (older results) the same library would be allowed 94 %.
    f["chains"][-1] = {k: v for k, v in f["chains"][-1].items() if k != "output_seconds"}
    assert target_verdict(point(50_000), f, "thinout") == "not met (33.5%)"


def test_no_ceiling_claimed_when_the_fast_path_beats_it() -> None:
    # slowlib's kernels would allow 58 % (86k tokens/s), but its fast path ran at 90k: the measured
    # kernel was not the one its step uses, so "unreachable" would be a false claim.
    assert target_verdict(point(90_000), FLOOR, "slowlib") == "not met (60.3%)"
    # The same with the floor timed in the rounds: the machine slowed down to a 120k floor, so 80k
    # tokens/s is below the 86k the start-of-run kernels allow but is 67 % of the floor beside it.
    rounds = {"backend": "floor", "impl": "torch", "mode": "chain", **point(120_000)}
    assert target_verdict(point(80_000), FLOOR, "slowlib", rounds) == "not met (66.7%)"
    assert target_verdict(point(60_000), FLOOR, "slowlib", rounds) == "unreachable: own chain kernel allows 58%"


def test_not_met_when_own_kernel_would_allow_it() -> None:
    # oklib's kernels allow 7.5 / 8.0 = 94 %: falling short is the fast path's own overhead.
    assert target_verdict(point(80_000), FLOOR, "oklib") == "not met (53.6%)"
    assert target_verdict(point(80_000), FLOOR, "torch") == "not met (53.6%)"


def test_failed_run_has_no_verdict() -> None:
    assert target_verdict({"error": "boom"}, FLOOR, "torch") == "-"


def test_main_table_carries_the_verdict_column() -> None:
    payload = {"floors": {"rnn": FLOOR},
               "main": [{"backend": "torch", "impl": "scratch", "mode": "fast", "first_epoch_seconds": 0.1,
                         **point(0.9 * FLOOR["floor_tokens_per_sec"])}]}
    row = next(ln for ln in main_table(payload).splitlines() if ln.startswith("| torch"))
    assert "| met |" in row and "90%" in row


def test_verdict_uses_the_floor_timed_in_the_same_rounds() -> None:
    # The machine got 20 % faster after the start-of-run floor: 130k against the start's 149k reads
    # as 87 %, but each round's floor says 130/160 = 81 %, 120/160 = 75 %, 128/160 = 80 %.
    fast = {"median": 128_000, "tokens_per_sec": [130_000, 120_000, 128_000], "min": 120_000, "max": 130_000}
    floor_rounds = {"backend": "floor", "impl": "torch", "mode": "chain", "median": 160_000,
                    "tokens_per_sec": [160_000, 160_000, 160_000], "min": 160_000, "max": 160_000}
    assert target_verdict(fast, FLOOR, "torch") == "met"  # start-of-run floor only
    assert target_verdict(fast, FLOOR, "torch", floor_rounds) == "met"  # median of 81, 75, 80 % = 80 %
    slower = {**fast, "tokens_per_sec": [126_000, 120_000, 125_000]}
    assert target_verdict(slower, FLOOR, "torch", floor_rounds) == "not met (78.1%)"  # median 125/160
    payload = {"floors": {"rnn": FLOOR}, "main": [
        {"backend": "torch", "impl": "scratch", "mode": "fast", "first_epoch_seconds": 0.1, **slower}, floor_rounds]}
    row = next(ln for ln in main_table(payload).splitlines() if ln.startswith("| torch"))
    assert "| 78% [75–79] |" in row and "| not met (78.1%) |" in row


def test_paired_floor_windows_are_used_for_their_variant() -> None:
    # The floor timed right after each variant's window: torch's rounds pair with 100k and 160k
    # floors (the machine sped up), so 80k and 128k are 80 % both times, whatever numpy's pairs say.
    torch = {"backend": "torch", "impl": "scratch", "mode": "fast", "first_epoch_seconds": 0.1,
             "median": 104_000, "tokens_per_sec": [80_000, 128_000], "min": 80_000, "max": 128_000}
    windows = [{"tokens_per_sec": 50_000, "paired_with": "numpy scratch/eager"},
               {"tokens_per_sec": 100_000, "paired_with": "torch scratch/fast"},
               {"tokens_per_sec": 50_000, "paired_with": "numpy scratch/eager"},
               {"tokens_per_sec": 160_000, "paired_with": "torch scratch/fast"}]
    floor_rounds = {"backend": "floor", "impl": "torch", "mode": "chain", "windows": windows, "median": 75_000,
                    "tokens_per_sec": [w["tokens_per_sec"] for w in windows], "min": 50_000, "max": 160_000}
    assert target_verdict(torch, FLOOR, "torch", floor_rounds) == "met"
    row = next(ln for ln in main_table({"floors": {"rnn": FLOOR}, "main": [torch, floor_rounds]}).splitlines()
               if ln.startswith("| torch"))
    assert "| 80% [80–80] |" in row


def test_the_roofline_is_the_big_gemm_rate_timed_beside_each_window() -> None:
    """The start-of-run big-GEMM rate is one measurement: on a machine that sped up after it, the roofline
    sat below the floor timed in the rounds and "% roofline" exceeded "% floor". Each floor window times the
    2048³ rate too; the table divides by it round by round, and the plot draws its median."""
    torch = {"backend": "torch", "impl": "scratch", "mode": "fast", "first_epoch_seconds": 0.1,
             "median": 104_000, "tokens_per_sec": [80_000, 128_000], "min": 80_000, "max": 128_000}
    # 1 MFLOP per token: 320 and 400 GFLOP/s are rooflines of 320k and 400k tokens/s (the start's is 200k)
    windows = [{"tokens_per_sec": 100_000, "paired_with": "torch scratch/fast", "big_gemm_flops": 320e9},
               {"tokens_per_sec": 50_000, "paired_with": "numpy scratch/eager", "big_gemm_flops": 100e9},
               {"tokens_per_sec": 160_000, "paired_with": "torch scratch/fast", "big_gemm_flops": 400e9}]
    floor_rounds = {"backend": "floor", "impl": "torch", "mode": "chain", "windows": windows, "median": 100_000,
                    "tokens_per_sec": [w["tokens_per_sec"] for w in windows], "min": 50_000, "max": 160_000}
    row = next(ln for ln in main_table({"floors": {"rnn": FLOOR}, "main": [torch, floor_rounds]}).splitlines()
               if ln.startswith("| torch"))
    assert "| 80% [80–80] | 29% [25–32] |" in row, row  # 80k / 320k, 128k / 400k: not 104k / 200k = 52 %
    assert window_roofline(floor_rounds, 1e6) == 320_000
    # older results (windows without the rate) keep the start-of-run roofline
    for w in windows:
        del w["big_gemm_flops"]
    row = next(ln for ln in main_table({"floors": {"rnn": FLOOR}, "main": [torch, floor_rounds]}).splitlines()
               if ln.startswith("| torch"))
    assert "| 80% [80–80] | 52% |" in row, row
    assert window_roofline(floor_rounds, 1e6) is None


def test_own_kernel_floor_timed_beside_the_fast_path() -> None:
    # At the start torch's chain was the floor's (its own kernels "allow" 100 %), but in the rounds its
    # own-kernel floor, timed right after the floor beside its window, was 70k and 76k against floors
    # of 100k: 70 % and 76 %, median 73 %. Its fast path's 60k and 70k (65 %) are ruled out by that.
    def rounds(mode: str, impl: str, rates: list[float]) -> dict:
        windows = [{"tokens_per_sec": r, "paired_with": "torch scratch/fast"} for r in rates]
        return {"backend": "floor", "impl": impl, "mode": mode, "windows": windows, "median": sum(rates) / len(rates),
                "tokens_per_sec": rates, "min": min(rates), "max": max(rates)}

    floor_rounds, own_rounds = rounds("chain", "tensorflow", [100_000, 100_000]), rounds("own", "torch", [70_000, 76_000])
    torch = {"backend": "torch", "impl": "scratch", "mode": "fast", "first_epoch_seconds": 0.1,
             "median": 65_000, "tokens_per_sec": [60_000, 70_000], "min": 60_000, "max": 70_000}
    assert target_verdict(torch, FLOOR, "torch", floor_rounds) == "not met (65.0%)"  # start-of-run own floor
    assert target_verdict(torch, FLOOR, "torch", floor_rounds, own_rounds) == "unreachable: own GEMM kernels allow 73%"
    faster = {**torch, "median": 75_000, "tokens_per_sec": [75_000, 75_000], "min": 75_000, "max": 75_000}
    assert target_verdict(faster, FLOOR, "torch", floor_rounds, own_rounds) == "not met (75.0%)"  # beat its kernels' share
    row = next(ln for ln in main_table({"floors": {"rnn": FLOOR}, "main": [torch, floor_rounds, own_rounds]}).splitlines()
               if ln.startswith("| torch"))
    # % own-kernel floor per round: 60/70 and 70/76 -> median 89 %; the ceiling column and the verdict as above.
    assert "| 89% [86–92] | 73% | unreachable: own GEMM kernels allow 73% |" in row


def ladder(own_ms: float, extra_ms: float, **more: object) -> dict:
    """A ladder result (benchmarks.ladder.measure) with only what the report reads."""
    rungs = ["L0", "L1", "L1x", "L3"]
    ms = dict(zip(rungs, [own_ms, own_ms + extra_ms / 2, own_ms + extra_ms, own_ms + 2 * extra_ms]))
    return {"rungs": rungs, "ms": ms, "own_ms": own_ms, "extra_ms": extra_ms, "bound_ms": own_ms + extra_ms,
            "work_factor": own_ms / (own_ms + extra_ms), "shape": {"B": 32, "H": 512, "T": 35, "V": 28}, **more}


def test_the_steps_other_work_can_rule_the_target_out() -> None:
    # oklib's GEMMs allow 94 % (7.5 / 8 ms), but its ladder measured 3 ms of the step's other work
    # beside an own-kernel floor of 8 ms: 93.75 % x 8 / 11 = 68.2 %, so its 53.6 % cannot reach 80 %.
    assert target_verdict(point(80_000), FLOOR, "oklib", ladder=ladder(8.0, 3.0)) == \
        "unreachable: own kernels with the step's other work allow 68.2%"
    # 0.5 ms of other work leaves 94 % x 8 / 8.5 = 88 %: the ladder rules nothing out.
    assert target_verdict(point(80_000), FLOOR, "oklib", ladder=ladder(8.0, 0.5)) == "not met (53.6%)"
    # A fast path already above the share the ladder says its kernels allow: no ceiling is claimed.
    assert target_verdict(point(105_000), FLOOR, "oklib", ladder=ladder(8.0, 3.0)) == "not met (70.3%)"
    # A ladder that failed, or none: the GEMM-only verdict.
    assert target_verdict(point(80_000), FLOOR, "oklib", ladder={"error": "boom"}) == "not met (53.6%)"
    # The GEMMs alone rule it out already: that verdict stands, the ladder is not needed.
    assert target_verdict(point(50_000), FLOOR, "slowlib", ladder=ladder(13.0, 3.0)) == \
        "unreachable: own chain kernel allows 58%"
    assert with_work_share(None, ladder(8.0, 3.0)) is None  # nothing measured the GEMMs' share


def test_the_bound_takes_the_gemms_as_issued_where_they_beat_the_own_kernel_floor() -> None:
    """JAX's ladder (latest run): own-kernel floor 10.44 ms, its GEMMs as XLA issues them (L0) 9.37, with the
    step's other work (L1x) 13.03. own + work = 14.10 ms overstated the least step (L1x measured those very
    pieces at 13.03): 91 % allowed x 10.44 / 14.10 read 67.0 %, against 72.9 % by 10.44 / 13.03."""
    lad = ladder(10.44, 3.66)
    lad["ms"] = {"L0": 9.37, "L1": 11.88, "L1x": 13.03, "L3": 16.14}
    assert with_work_share(0.91, lad) == pytest.approx(0.91 * 10.44 / 13.03)
    assert with_work_share(0.91, ladder(8.0, 3.0)) == pytest.approx(0.91 * 8 / 11)  # L0 = own: as before


def test_a_share_below_80_never_reads_as_80() -> None:
    # 93.75 % x 8 / (8 + 1.37544) = 79.996 %: one decimal would round it up to "80.0".
    assert target_verdict(point(80_000), FLOOR, "oklib", ladder=ladder(8.0, 1.37544)) == \
        "unreachable: own kernels with the step's other work allow 79.9%"
    assert target_verdict(point(0.79996 * FLOOR["floor_tokens_per_sec"]), FLOOR, "oklib") == "not met (79.9%)"


def test_report_lists_the_ladders_and_uses_them_in_the_verdict() -> None:
    # torch's chain is the floor's (its GEMMs allow 100 %); 3 ms of other work beside an own-kernel
    # floor of 8 ms leave 100 % x 8 / 11 = 72.7 %. Its fast path: 80k tokens/s = 14 ms per 1120-token
    # step, as the ladder's backend step (8 + 2 x 3 ms): no drift between the windows and the ladder.
    torch = {"backend": "torch", "impl": "scratch", "mode": "fast", "first_epoch_seconds": 0.1, **point(80_000)}
    payload = {"floors": {"rnn": FLOOR}, "main": [torch],
               "ladders": {"torch": ladder(8.0, 3.0), "jax": {"library": "jax", "error": "exit 1: boom"}}}
    text = ladders_text(payload)
    assert "| torch | 8.00 | 8.00 | 9.50 | 11.00 | 14.00 | - | 3.00 | 100% | 73% | 1.00x |" in text
    assert "| jax | failed: exit 1: boom |" in text
    # JAX's ladder times its step once more, last, with free reshapes for its transposes: the step
    # column (and the drift) still take the backend's real step, and the extra rung gets its own column.
    free = ladder(8.0, 3.0)
    free["rungs"].append("L3- free transposes")
    free["ms"]["L3- free transposes"] = 13.0
    text = ladders_text({**payload, "ladders": {"torch": free}})
    assert "| torch | 8.00 | 8.00 | 9.50 | 11.00 | 14.00 | 13.00 | 3.00 | 100% | 73% | 1.00x |" in text
    row = next(ln for ln in main_table(payload).splitlines() if ln.startswith("| torch"))
    assert "| unreachable: own kernels with the step's other work allow 72.7% |" in row
    del payload["ladders"]
    row = next(ln for ln in main_table(payload).splitlines() if ln.startswith("| torch"))
    assert "| not met (53.6%) |" in row  # without the ladder only the GEMMs count
    assert ladders_text(payload) == ""


def test_ladder_measures_each_rung_beside_the_floor_parts() -> None:
    """benchmarks.ladder runs at tiny shapes for each framework with a ladder that is installed (its
    rungs trace and run, the backend's step included), and its result holds together: every rung and
    floor part timed, the bound the own-kernel floor plus what L1x adds to L0."""
    from benchmarks import ladder as lad

    ran = 0
    for library in lad.LIBRARIES:
        try:
            require_backend(library)
        except pytest.skip.Exception:
            continue
        r = lad.measure(library, rounds=2, B=3, H=8, T=4, V=5, big_n=64)
        assert r["rungs"][0].startswith("L0") and r["rungs"][2].startswith("L1x") and len(r["rungs"]) >= 4
        assert all(r["ms"][n] > 0 for n in r["rungs"]) and all(v > 0 for v in r["parts_ms"].values())
        assert r["extra_ms"] == pytest.approx(max(r["ms"][r["rungs"][2]] - r["ms"][r["rungs"][0]], 0.0))
        l0 = r["ms"][r["rungs"][0]]
        assert r["bound_ms"] == pytest.approx(min(r["own_ms"], l0) + r["extra_ms"]) and r["work_factor"] > 0
        ran += 1
    if not ran:
        pytest.skip("neither jax nor torch is installed and selected")


def test_scaling_uses_the_floor_timed_beside_each_window() -> None:
    # The shape's floor was 100k at its start, but the machine sped up: the floor timed right after
    # torch's two windows read 150k and 160k, so torch's 120k and 132k are 80 % and 82.5 % (median
    # 81.25 %), not 126 % of the start's floor. jax's windows had no floor beside them: the start's.
    torch = {"backend": "torch", "impl": "scratch", "mode": "fast", "median": 126_000,
             "tokens_per_sec": [120_000, 132_000], "min": 120_000, "max": 132_000}
    jax = {"backend": "jax", "impl": "scratch", "mode": "fast", "median": 50_000,
           "tokens_per_sec": [50_000, 50_000], "min": 50_000, "max": 50_000}
    windows = [{"tokens_per_sec": 150_000, "paired_with": "torch scratch/fast"},
               {"tokens_per_sec": 160_000, "paired_with": "torch scratch/fast"}]
    floor = {"backend": "floor", "impl": "jax", "mode": "chain", "windows": windows, "median": 155_000,
             "tokens_per_sec": [150_000, 160_000], "min": 150_000, "max": 160_000}
    payload = {"scaling": [{"varied": "num_hiddens", "value": 1024, "floor": {"floor_tokens_per_sec": 100_000.0},
                            "results": [torch, jax, floor]}]}
    row = next(ln for ln in scaling_table(payload).splitlines() if ln.startswith("| num_hiddens"))
    assert "| 100,000 / 155,000 |" in row and "126,000 (81%)" in row and "50,000 (50%)" in row


def test_a_scaling_sweep_cut_short_still_plots(tmp_path) -> None:
    """results.json is written after every shape; a run stopped before the batch sizes (or a report of
    one still running) plotted an empty log axis and crashed."""
    pytest.importorskip("matplotlib")
    from benchmarks.report import plot

    torch = {"backend": "torch", "impl": "scratch", "mode": "fast", "median": 126_000}
    payload = {"scaling": [{"varied": "num_hiddens", "value": 128, "floor": {"floor_tokens_per_sec": 200_000.0},
                            "results": [torch]}]}
    assert plot(payload, tmp_path) == ["scaling.png"]
    assert (tmp_path / "scaling.png").stat().st_size > 0


def test_a_report_rendered_again_from_results_json_lists_rows_in_the_run_order(tmp_path) -> None:
    """results.json is written with sorted keys; `python -m benchmarks.report DIR` listed the cells
    (gru before rnn) and the ladders (jax before torch) alphabetically, unlike the run's own report."""
    import json
    from pathlib import Path

    from benchmarks.report import write

    saved = Path(__file__).parents[1] / "benchmarks" / "results" / "latest" / "results.json"
    payload = json.loads(saved.read_text())  # keys sorted, as bench_train writes them
    assert list(payload["floors"]) == sorted(payload["floors"]) and list(payload["ladders"]) == ["jax", "torch"]

    def reversed_keys(obj):
        if isinstance(obj, dict):
            return {k: reversed_keys(obj[k]) for k in reversed(list(obj))}
        return [reversed_keys(x) for x in obj] if isinstance(obj, list) else obj

    reports = []
    for i, p in enumerate((payload, reversed_keys(payload))):
        (tmp_path / str(i)).mkdir()
        write(p, tmp_path / str(i))
        reports.append((tmp_path / str(i) / "report.md").read_text())
    assert reports[0] == reports[1]
    text = reports[0]
    assert text.index("| rnn | 1.659 M") < text.index("| gru |")  # the floors: the tanh RNN first
    ladders = text[text.index("## What the step's other work leaves"):]
    assert ladders.index("| torch |") < ladders.index("| jax |")


def test_own_batched_seconds() -> None:
    from benchmarks.floor import own_batched_seconds

    # 2 GFLOP batched at a 200 GFLOP/s big GEMM: 10 ms; a 100 GFLOP/s gradient GEMM doubles it; a
    # faster one is capped at the big GEMM's rate; 0.5 GFLOP of output GEMMs measured at 4 ms
    # replace their share: 4 + 1.5 / 100 GFLOP/s = 19 ms.
    assert own_batched_seconds(2e9, 200e9) == 2e9 / 200e9
    assert own_batched_seconds(2e9, 200e9, 100e9) == 2e9 / 100e9
    assert own_batched_seconds(2e9, 200e9, 400e9) == 2e9 / 200e9
    assert abs(own_batched_seconds(2e9, 200e9, 100e9, 4e-3, 0.5e9) - 19e-3) < 1e-12


def test_legend_says_what_the_run_measured() -> None:
    # A run with no floor windows and no per-GEMM rates: one start-of-run floor, the batched FLOPs at
    # big-GEMM rate, and no word about drift between paired windows.
    old = legend({"floors": {"rnn": {**FLOOR, "chains": [FLOOR["chains"][0]]}}, "main": []})
    assert "once, at the start of the run" in old and "big-GEMM rate" in old and "drift" not in old
    # Paired floor and own-kernel windows with measured output GEMMs: the legend says so.
    chains = [{**FLOOR["chains"][0], "gradient_gflops": 150.0, "output_seconds": 1e-3}]
    rows = [{"backend": "floor", "mode": "chain", "windows": [{"tokens_per_sec": 1.0, "paired_with": "torch scratch/fast"}]},
            {"backend": "floor", "mode": "own", "windows": []}]
    new = legend({"floors": {"rnn": {**FLOOR, "chains": chains}}, "main": rows})
    assert "right after its window" in new and "output layer's three thin GEMMs" in new and "drift" in new


def _as_array(x) -> np.ndarray:
    """Any library's array as NumPy (computing it first: MXNet's through asnumpy)."""
    return np.asarray(x.asnumpy() if hasattr(x, "asnumpy") else x)


def _same_up_to_transpose(got: np.ndarray, want: np.ndarray, atol: float) -> None:
    """A feature-major form gives the batch-major result transposed."""
    got = got.T if got.shape != want.shape and got.T.shape == want.shape else got
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=atol)


@pytest.mark.parametrize("library", ["numpy", "torch", "mxnet", "tensorflow", "jax"])
def test_every_chain_form_computes_the_same_chain(library: str) -> None:
    """The floor takes the fastest of a library's chain forms, so each must run the same products:
    the feature-major forms give the batch-major state transposed. (MXNet's last form, the fused RNN
    operator, applies tanh between the products and is not compared.)"""
    if library != "numpy":
        require_backend(library)
    from benchmarks.floor import chain_runners

    B, H, T = 3, 8, 4
    runners = chain_runners(library, B, H, 1, T)
    if library == "mxnet":
        runners = runners[:-1]
    outs = [_as_array(run()) for run, _sync in runners]
    want = outs[0]
    assert len(outs) >= 2 and want.shape == (B, H) and np.abs(want).max() > 1e-3  # not decayed to nothing
    for got in outs[1:]:
        _same_up_to_transpose(got, want, atol=1e-6)


def test_a_variant_that_cannot_start_is_a_row_not_a_crash() -> None:
    """A variant whose process reports an error at start (e.g. torch's nn.GRU for d2l's GRU) must
    leave a row with its reason, and the other variants must still be timed."""
    import io

    from benchmarks.bench_train import run_interleaved

    log = io.StringIO()
    bad = {"backend": "nosuch", "impl": "scratch", "mode": "fast"}
    good = {"backend": "numpy", "impl": "scratch", "mode": "eager", "overrides": {"num_hiddens": 8}}
    rows = run_interleaved([bad, good], repeats=1, window=0.05, timeout=120, log=log)
    assert "nosuch" in rows[0]["error"] and "FAILED" in log.getvalue()
    assert "error" not in rows[1] and rows[1]["windows"][0]["tokens_per_sec"] > 0




@pytest.mark.parametrize("library", ["numpy", "torch", "mxnet", "tensorflow", "jax"])
def test_every_batched_gemm_form_computes_the_same_products(library: str) -> None:
    """The own-kernel floor takes the fastest form of the recurrent weights' gradient and of each
    output-layer GEMM, so every form must compute the same product (up to a transpose)."""
    if library != "numpy":
        require_backend(library)
    from benchmarks.floor import gradient_runners, output_runners

    B, H, V, T = 3, 8, 5, 4
    grads = [_as_array(run()) for run, _sync in gradient_runners(library, B, H, 1, T)]
    assert len(grads) >= 2 and grads[0].shape == (H, H)
    for got in grads[1:]:
        _same_up_to_transpose(got, grads[0], atol=1e-5)
    outs = [[_as_array(o) for o in run()] for run, _sync in output_runners(library, B, H, V, T)]
    assert len(outs) >= 2 and [o.shape for o in outs[0]] == [(T * B, V), (T * B, H), (H, V)]
    for combo in outs[1:]:
        for got, want in zip(combo, outs[0]):
            _same_up_to_transpose(got, want, atol=1e-5)


class _FakeFloor:
    """A floor server whose windows answer a scripted rate (no process)."""

    def __init__(self, impl: str, rates: list[float], error: str | None = None) -> None:
        self.spec, self.error, self.windows, self.rates = {"backend": "floor", "impl": impl, "mode": "chain"}, error, [], rates

    def window(self, seconds: float, timeout: float) -> None:
        self.windows.append({"tokens_per_sec": self.rates[len(self.windows)]})

    def stop(self) -> None:
        pass


def test_the_floor_is_the_fastest_contender_in_each_window() -> None:
    """A library slow at the start of the run must not set a lenient floor for the whole run: each
    window's floor is the fastest contender's chain in that window."""
    from benchmarks.bench_train import BestOf
    from benchmarks.report import floor_chains

    best = BestOf([_FakeFloor("torch", [90.0, 80.0, 70.0]), _FakeFloor("jax", [60.0, 100.0, 110.0])])
    for _ in range(3):
        best.window(0.0, 1.0)
    row = best.result()
    assert row["tokens_per_sec"] == [90.0, 100.0, 110.0] and row["median"] == 100.0
    assert [w["chain_library"] for w in row["windows"]] == ["torch", "jax", "jax"]
    assert row["windows"][1]["contenders"] == {"torch": 80.0, "jax": 100.0}
    assert "faster of torch's and jax's chains" in floor_chains(row) and "torch's in 1, jax's in 2 of 3" in floor_chains(row)


def test_a_contender_that_fails_leaves_the_other() -> None:
    from benchmarks.bench_train import BestOf
    from benchmarks.report import floor_chains

    best = BestOf([_FakeFloor("mxnet", [], error="exit 1: boom"), _FakeFloor("numpy", [50.0])])
    best.window(0.0, 1.0)
    row = best.result()
    assert row["median"] == 50.0 and row["library_errors"] == {"mxnet": "exit 1: boom"}
    assert "mxnet failed: exit 1: boom" in floor_chains(row)
    dead = BestOf([_FakeFloor("mxnet", [], error="boom"), _FakeFloor("numpy", [], error="bang")])
    assert dead.error and "error" in dead.result()  # no contender: an error row, no windows


def test_floor_windows_come_from_every_contender_process() -> None:
    """End to end at a tiny shape: two floor processes (NumPy's chain twice) timed beside the oracle."""
    import io

    from benchmarks.bench_train import run_interleaved

    oracle = {"backend": "numpy", "impl": "scratch", "mode": "eager", "overrides": {"num_hiddens": 8}}
    floor = {"backend": "floor", "impl": "numpy", "mode": "chain", "cell": "rnn", "B": 2, "H": 8, "T": 3, "G": 1,
             "L": 1, "V": 28, "batched_flops": 1e3, "contenders": ["numpy", "nosuch"]}
    rows = run_interleaved([oracle], repeats=2, window=0.1, timeout=120, log=io.StringIO(), floor_spec=floor, own=False)
    fl = rows[1]
    assert fl["libraries"] == ["numpy", "nosuch"] and "nosuch" in fl["library_errors"]
    assert len(fl["windows"]) == 2 and all(w["chain_library"] == "numpy" for w in fl["windows"])
    assert all(w["paired_with"] == "numpy scratch/eager" and w["tokens_per_sec"] > 0 for w in fl["windows"])


def test_fastest_form_is_timed_every_window_not_picked_once() -> None:
    """The floor's chain is the fastest of its forms *in each window*: a form slow at start-up that
    is fast later (or the reverse) must not decide the floor for the whole run."""
    from benchmarks.bench_train import fastest_form

    delays = {"slow": 0.02, "fast": 0.002}  # 10x apart: sleep's overshoot on a busy machine stays below

    def form(name: str) -> tuple:
        return (lambda: time.sleep(delays[name]), lambda _: None)

    seconds, calls = fastest_form([form("slow"), form("fast")], 0.1)
    assert 0.002 <= seconds < 0.011 and calls >= 4
    delays["slow"], delays["fast"] = 0.002, 0.02  # the forms swap speeds: the next window follows
    seconds, _ = fastest_form([form("slow"), form("fast")], 0.1)
    assert 0.002 <= seconds < 0.011
    seconds, calls = fastest_form([form("slow")], 0.0)  # a window shorter than one call still times it
    assert calls == 1 and seconds > 0


def test_turns_interleave_variants_for_rounds_or_seconds() -> None:
    """The shared timing loop: variants alternate call by call; ``rounds`` is exact when no time is
    asked for, ``seconds`` extends the turns, and a variant's own call order is kept."""
    from benchmarks.timing import turns

    order: list[str] = []
    times = turns([lambda: order.append("a"), lambda: order.append("b")], rounds=3)
    assert order == ["a", "b"] * 3 and [len(t) for t in times] == [3, 3]
    start = time.perf_counter()
    times = turns([lambda: time.sleep(0.002)], seconds=0.03)
    wall = time.perf_counter() - start
    # `seconds` bounds the wall time, loop overhead included, not the calls' own sum (which fell to
    # 0.02988 s of 0.03 in one CI run): the turns run past it, and the last one starts before it ends.
    assert wall >= 0.03 and sum(times[0][:-1]) < 0.03
    assert 2 <= len(times[0]) <= 16 and all(t >= 0.002 for t in times[0])
    assert [len(t) for t in turns([lambda: None])] == [1]  # neither given: one round


def test_own_kernel_floor_windows_answer_every_part() -> None:
    """End to end at a tiny shape: NumPy's own-kernel floor beside the oracle answers its chain, its
    gradient GEMM's rate and its output GEMMs' time in every window."""
    import io

    from benchmarks.bench_train import run_interleaved

    oracle = {"backend": "numpy", "impl": "scratch", "mode": "eager", "overrides": {"num_hiddens": 8}}
    floor = {"backend": "floor", "impl": "numpy", "mode": "chain", "cell": "rnn", "B": 2, "H": 8, "T": 3, "G": 1,
             "L": 1, "V": 28, "batched_flops": 1e3, "contenders": ["numpy"]}
    rows = run_interleaved([oracle], repeats=2, window=0.1, timeout=120, log=io.StringIO(), floor_spec=floor, own=True)
    own = [r for r in rows if r.get("mode") == "own"]
    assert len(own) == 1 and len(own[0]["windows"]) == 2, rows
    for w in own[0]["windows"]:
        assert w["chain_seconds"] > 0 and w["gradient_gflops"] > 0 and w["output_seconds"] > 0
        assert w["tokens_per_sec"] > 0 and w["chains"] >= 2  # numpy's chain has two forms, each timed


def test_the_machine_line_tells_two_cpus_of_one_name_apart(tmp_path) -> None:
    """Virtual machines name every Xeon "Intel(R) Xeon(R) Processor": an Emerald Rapids run and a faster
    machine's read the same. bench_train records the family and model numbers; older runs render as before."""
    import json
    from pathlib import Path

    from benchmarks.bench_train import machine_info
    from benchmarks.report import write

    saved = Path(__file__).parents[1] / "benchmarks" / "results" / "latest" / "results.json"
    payload = json.loads(saved.read_text())
    assert "cpu_family" not in payload["machine"]
    write(payload, tmp_path)
    assert "Machine: Intel(R) Xeon(R) Processor, 2 CPUs" in (tmp_path / "report.md").read_text()
    payload["machine"].update(cpu_family=6, cpu_model_number=207)
    write(payload, tmp_path)
    assert "Machine: Intel(R) Xeon(R) Processor (family 6, model 207), 2 CPUs" in (tmp_path / "report.md").read_text()
    here = machine_info()
    if Path("/proc/cpuinfo").is_file() and "cpu family" in Path("/proc/cpuinfo").read_text():
        assert isinstance(here.get("cpu_family"), int) and isinstance(here.get("cpu_model_number"), int), here


@pytest.mark.parametrize("how", [["-m", "benchmarks.report"], ["benchmarks/report.py"]])
def test_a_results_folder_with_ladders_re_renders_from_the_command_line(tmp_path, how) -> None:
    """`python benchmarks/report.py DIR`, as benchmarks/README.md once gave it, stopped on
    "No module named 'benchmarks'" for any folder with ladders (the verdict imports benchmarks.ladder)."""
    import shutil
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).parents[1]
    shutil.copy(root / "benchmarks" / "results" / "latest" / "results.json", tmp_path / "results.json")
    proc = subprocess.run([sys.executable, *how, str(tmp_path)], cwd=root, capture_output=True, text=True, timeout=300,
                          check=False)
    assert proc.returncode == 0, proc.stderr
    assert "## What the step's other work leaves" in (tmp_path / "report.md").read_text()

"""The seed plan (--seeds auto, docs/design.md §8.2.1): the seeds a cell needs at known values, the
pilot it reads, each cell's plan, its own seed list in the commands, and its refusals."""

import math

import pytest
from scipy import stats

from lottery.experiment import seed_plan, sweeps
from lottery.experiment.estimate import TrialState
from lottery.experiment.seed_plan import PILOT, Target
from lottery.measure.stats import seeds_needed
from lottery.paper import tables


def half_width(sd, n):
    return stats.t.ppf(0.975, n - 1) * sd / math.sqrt(n)


def test_the_seeds_needed_are_the_smallest_n_whose_interval_is_within_the_effect():
    # s = 1 pp, effect 1 pp: t(0.975, 6) / sqrt(7) = 0.925 <= 1 < t(0.975, 5) / sqrt(6) = 1.049
    assert half_width(1, 7) == pytest.approx(0.9248, abs=1e-4) and half_width(1, 6) == pytest.approx(1.0494, abs=1e-4)
    assert seeds_needed(1.0, 3, 1.0) == 7 and seeds_needed(1.0, 2, 1.0) == 7
    assert seeds_needed(0.5, 3, 0.25) == 18  # the same ratio, in other units
    assert half_width(0.5, 18) <= 0.25 < half_width(0.5, 17)
    assert seeds_needed(0.2, 3, 1.0) == 3  # the pilot is already narrow enough: never below its seeds
    assert seeds_needed(1.0, 9, 1.0) == 9
    assert seeds_needed(0.0, 3, 1.0) == 3  # no spread at all
    big = seeds_needed(10.0, 3, 0.1)  # far beyond any cap, found in a few steps from the normal bound
    assert half_width(10, big) <= 0.1 < half_width(10, big - 1)


def test_a_need_reads_the_pilot_seeds_alone_and_says_capped_where_the_cap_binds():
    need = seed_plan.need({"0": 1.0, "1": -1.0, "2": 0.0, "3": 50.0, "4": None}, 1.0)  # seeds 3 and 4: not the pilot
    assert (need.pilot, need.sd, need.seeds) == (3, pytest.approx(1.0), 7)
    assert seed_plan.need({0: 1.0, 2: None, 3: 0.0}, 1.0) is None  # one pilot seed: no sd
    assert seed_plan.need({0: 0.4, 1: 0.4}, 1.0).seeds == 2  # two pilot seeds alike: what they are
    assert seed_plan.needs_text(7, 10) == "needs 7"
    assert seed_plan.needs_text(14, 10) == "needs 10, capped: would need 14"


def state(cell, seed, status, delta=None):
    return TrialState(cell, seed, status, metrics={} if delta is None else {"delta_pp": delta})


A, B, C, D = ({"density": str(p)} for p in range(1, 5))
PILOTS = [*(state(A, s, "finished", d) for s, d in enumerate((1.0, -1.0, 0.0))),  # sd 1: needs 7
          *(state(B, s, "finished", d) for s, d in enumerate((2.0, -2.0, 0.0))),  # sd 2: needs 18
          state(C, 0, "finished", 0.3), state(C, 1, "failed"), state(C, 2, "missing"),
          *(state(D, s, "n/a") for s in range(PILOT))]


def test_each_cell_runs_its_pilot_first_then_its_need_capped():
    before = seed_plan.plan_cells(PILOTS, [A, B, C, D], ["delta_pp"], Target(1.0, 10), pilot_ran=False)
    assert [p.seeds for p in before] == [7, 10, PILOT, PILOT]
    assert before[0].need.seeds == 7 and before[1].need.seeds == 18  # uncapped, for the plan to say so
    assert before[2].unknown == seed_plan.PENDING and before[3].unknown == seed_plan.NA
    after = seed_plan.plan_cells(PILOTS, [A, B, C, D], ["delta_pp"], Target(1.0, 10), pilot_ran=True)
    assert after[2] == seed_plan.CellPlan(PILOT, unknown="1 pilot seed(s) finished: too few for an sd, so no more run")
    costs = seed_plan.plan_cells(PILOTS, [A, B], None, Target(), pilot_ran=False)  # an unsigned table: no delta to settle
    assert [p.seeds for p in costs] == [PILOT, PILOT] and "measured costs" in costs[0].unknown
    two = [*PILOTS[:3], *(state(A, s, "finished", 0.1 * s) for s in range(3))]
    for s in two[3:]:
        s.metrics["cifar10c_delta_pp"] = s.metrics.pop("delta_pp") * 30  # a second delta, noisier: it decides
    assert seed_plan.plan_cells(two[3:], [A], ["delta_pp", "cifar10c_delta_pp"], Target(), False)[0].need.seeds == 38


def test_cells_of_different_needs_run_their_own_seeds_in_exact_multiruns():
    sweep = sweeps.load("table2")  # criterion x density 1..5
    seeds = {("snip", "1"): [3, 4, 5, 6], ("snip", "2"): [3, 4, 5, 6], ("grasp", "1"): [3, 4, 5, 6],
             ("grasp", "3"): [3, 4], ("snip", "5"): [1, 3, 4]}
    lists = [seeds.get((c["criterion"], c["density"]), []) for c in sweep.cells()]
    cmds = sweeps.commands(sweep, sweeps.Setting("smoke", "synthetic"), lists)
    runs = {" ".join(o for o in c[4:] if o.split("=")[0] in ("criterion", "density", "seed")) for c in cmds}
    assert runs == {"criterion=snip density=1,2 seed=3,4,5,6", "criterion=grasp density=1 seed=3,4,5,6",
                    "criterion=grasp density=3 seed=3,4", "criterion=snip density=5 seed=1,3,4"}
    dense = sweeps.dense_first(cmds)  # one dense multirun: every seed any of them needs, once
    assert len(dense) == 1 and "seed=1,3,4,5,6" in dense[0]
    every = sweeps.commands(sweep, sweeps.Setting("smoke", "synthetic"), 2)  # a count: one multirun per grid
    assert len(every) == 1 and "criterion=snip,grasp" in every[0] and "seed=0,1" in every[0]


def test_products_hold_exactly_the_cells_given():
    cells = [{"a": a, "b": b, "c": c} for a in "xy" for b in "12" for c in "pq" if (a, b, c) != ("y", "2", "q")]
    parts = sweeps.products(cells)
    covered = [{"a": a, "b": b, "c": c} for p in parts for a in p["a"] for b in p["b"] for c in p["c"]]
    assert sorted(map(str, covered)) == sorted(map(str, cells)) and len(parts) == 3
    assert sweeps.products(cells[:4]) == [{"a": ["x"], "b": ["1", "2"], "c": ["p", "q"]}]


@pytest.mark.parametrize("command,args,says", [
    (sweeps.main, ["--seeds", "0"], "--seeds=0: give a number of seeds >= 1, or auto"),
    (sweeps.main, ["--seeds", "foo"], "--seeds=foo: give a number of seeds >= 1, or auto"),
    (sweeps.main, ["--effect", "-1"], "--effect=-1: give the smallest effect of interest in pp, a number > 0"),
    (tables.main, ["--effect", "nan"], "--effect=nan: give the smallest effect of interest in pp, a number > 0"),
    (sweeps.main, ["--max-seeds", "2"], "--max-seeds=2: give a whole number >= 3, the pilot's seeds"),
    (tables.main, ["--max-seeds", "ten"], "--max-seeds=ten: give a whole number >= 3, the pilot's seeds"),
])
def test_a_bad_seed_plan_is_one_line_before_any_work(command, args, says, capsys, monkeypatch):
    for module in (sweeps, tables):
        monkeypatch.setattr(module, "load", lambda *a: pytest.fail("work began"))
    assert command(["table2", "--profile", "smoke", *args]) == 2
    assert capsys.readouterr().err == f"lottery: error: {says}\n"

"""Sweep files and the table builder: one source of truth per table, cells that could be wrong."""

import csv
import io
import json

import mlflow
import pytest

from lottery.experiment import sweeps
from lottery.experiment.design import validate
from lottery.experiment.seed_plan import Target
from lottery.paper import render, tables
from lottery.paper.cells import build
from tests.helpers import cell_keys


@pytest.mark.parametrize("profile", ["paper", "quick", "smoke"])
@pytest.mark.parametrize("name", sweeps.available())
def test_every_sweep_composes_under_every_profile(name, profile):
    sweep = sweeps.load(name)
    data = sweep.data.get("smoke", "synthetic")  # the sweep's own wiring data (text for language models)
    cells = sweeps.compose_cells(sweep, sweeps.Setting(profile, data, extra=("device=cpu",)))
    assert [c for c, _ in cells] == sweep.cells()
    for _, cfg in cells:
        validate(cfg)


def test_every_paper_artefact_has_a_sweep():
    assert set(sweeps.available()) == {"table1", "table1_reinit", "table2", "table3", "table4", "table5", "figure3",
                                       "iterative", "joint", "lm"}
    assert len(sweeps.load("table4").cells()) == 7 and len(sweeps.load("table1").cells()) == 20


def test_sweep_commands_are_hydra_multiruns():
    cmds = sweeps.commands(sweeps.load("table4"), sweeps.Setting("smoke", "synthetic", extra=("train.epochs=2",)), 3)
    assert len(cmds) == 2  # one per grid
    assert cmds[1][3:] == ["-m", "mode=init", "criterion=grasp", "model=resnet56", "density=3,4,5,12",
                           "profile=smoke", "seed=0,1,2", "tracking.experiment=table4", "data=synthetic",
                           "train.epochs=2"]


def key(criterion, density):
    return f"{criterion}-{density}"


def keys_of(sweep):
    return [key(c["criterion"], c.get("density", c.get("rewind_epoch"))) for c in sweep.cells()]


def run(criterion, density, seed, delta, dense=90.0, cka=0.9, start=0, mcnemar=None):
    metrics = {"delta_pp": delta, "dense_accuracy": dense, "cka": cka}
    if mcnemar is not None:
        metrics["mcnemar_p"] = mcnemar
    return {"tags": {"cell_key": key(criterion, density), "seed": str(seed), "profile": "smoke", "amp": "bf16",
                     "device": "cpu"},
            "metrics": {**metrics, "train_images": 512, "test_images": 200}, "params": {"train.epochs": "4", "data.name": "synthetic"},
            "start": start}


KNOWN = [run("grasp", 1, 0, 0.5), run("grasp", 1, 1, 0.3), run("grasp", 1, 2, 0.1),  # mean 0.3, std 0.2
         run("snip", 1, 0, -0.4, mcnemar=0.03), run("snip", 2, 0, 0.1, mcnemar=0.4),
         run("grasp", 2, 0, -1.0, dense=90.0), run("grasp", 2, 1, 0.2, dense=91.0)]


def cells_of(runs, name="table2", xi="0"):
    sweep = sweeps.load(name)
    return {(c.row, c.column): c for c in build(sweep, runs, keys_of(sweep), xi=xi)}


def test_cells_aggregate_seeds_mark_signs_and_leave_missing_cells_missing():
    cells = cells_of(KNOWN)
    g1 = cells[(("1",), "grasp")]
    assert g1.ours.mean == pytest.approx(0.3) and g1.ours.std == pytest.approx(0.2) and g1.ours.n == 3
    assert g1.winning and g1.paper == 0.40 and g1.sign_agrees
    s1 = cells[(("1",), "snip")]
    assert not s1.winning and s1.ours.std is None and s1.sign_agrees is False  # paper +0.08
    g2 = cells[(("2",), "grasp")]
    assert g2.ours.mean == pytest.approx(-0.4) and not g2.winning
    assert cells[(("3",), "snip")].ours is None  # missing, not 0
    # xi = std: one standard deviation of the dense accuracy over the cell's seeds (0.707 pp)
    assert cells_of(KNOWN, xi="std")[(("2",), "grasp")].winning
    assert cells_of(KNOWN, xi="1")[(("1",), "snip")].winning


def test_interval_and_p_value_match_student_t_computed_by_hand():
    from scipy import stats

    g1 = cells_of(KNOWN)[(("1",), "grasp")]
    half = 4.302652729911275 * 0.2 / 3 ** 0.5  # t(0.975, df=2) * s / sqrt(n)
    assert (g1.ours.ci_low, g1.ours.ci_high) == (pytest.approx(0.3 - half), pytest.approx(0.3 + half))
    assert g1.p_value == pytest.approx(stats.ttest_1samp([0.5, 0.3, 0.1], 0).pvalue)
    assert g1.significant is False  # the interval [-0.20, +0.80] holds 0
    clear = cells_of([run("grasp", 1, s, d) for s, d in enumerate((0.9, 1.0, 1.1))])[(("1",), "grasp")]
    assert clear.significant and clear.ours.ci_low > 0
    # n = 1: McNemar's p decides
    cells = cells_of(KNOWN)
    assert cells[(("1",), "snip")].significant and cells[(("1",), "snip")].p_value == 0.03
    assert cells[(("2",), "snip")].significant is False


def test_the_dense_networks_interval_stays_within_what_an_accuracy_can_be():
    runs = [run("grasp", 1, s, 0.1, dense=d) for s, d in enumerate((99.7, 99.9, 98.0))]
    for r in runs:
        r["tags"].update(model="resnet32", dense_key=f"d{r['tags']['seed']}")
    # mean 99.2, sd 1.04: t(0.975, 2) * sd / sqrt(3) = 2.59 pp either side, so the raw interval ends at 101.79 %
    [line] = render.dense_reference(list(cells_of(runs).values()))
    assert line == "Dense resnet32 (n = 3 network(s), mean [95 % interval]): accuracy 99.20 % [96.61 %, 100.00 %]."


def test_mcnemar_exact_test_matches_the_binomial_computed_by_hand():
    import torch

    from lottery.training.tasks.base import TASKS

    def mcnemar_p(ticket, dense, labels):
        return TASKS["classification"].paired(ticket, dense, labels)["p_value"]

    labels = torch.zeros(20, dtype=torch.long)
    dense = torch.zeros(20, dtype=torch.long)
    ticket = torch.zeros(20, dtype=torch.long)
    dense[:7] = 1  # 7 images only the ticket gets right
    ticket[7:8] = 1  # 1 image only the dense network gets right; 12 both right
    assert mcnemar_p(ticket, dense, labels) == pytest.approx(2 * (1 + 8) / 2 ** 8)  # 0.0703125
    assert mcnemar_p(dense, dense, labels) == 1.0


def test_a_run_of_another_identity_changes_no_cell_and_a_newer_run_replaces_an_older_one():
    before = cells_of(KNOWN)
    other = run("grasp", 1, 0, 5.0)
    other["tags"]["cell_key"] = "grasp-1-with-weight-decay-5e-4"
    after = cells_of([*KNOWN, other])
    assert all((a.ours and (a.ours.n, a.ours.mean)) == (b.ours and (b.ours.n, b.ours.mean))
               for a, b in zip(before.values(), after.values()))
    newer = cells_of([*KNOWN, run("grasp", 1, 0, 1.1, start=5)])[(("1",), "grasp")]
    assert newer.ours.n == 3 and newer.ours.mean == pytest.approx(0.5) and newer.replaced == 1
    assert "1 older run(s) replaced" in render.markdown(sweeps.load("table2"), list(
        cells_of([*KNOWN, run("grasp", 1, 0, 1.1, start=5)]).values()))


def test_three_formats_render_the_same_cells():
    sweep = sweeps.load("table2")
    cells = build(sweep, KNOWN, keys_of(sweep))
    md = render.markdown(sweep, cells)
    assert "| (+) +0.30 ± 0.20 [-0.20, +0.80] (n=3, n.s., needs 3) | (+) +0.40 ✓ |" in md
    assert "(-) -0.40 (n=1, McNemar p=0.03, sig) | (+) +0.08 ✗" in md
    assert "| 3 | missing | (-) -0.50 | missing | (+) +0.34 |" in md
    assert "1 of 4 significant" in md
    assert "| (-) -0.40 ± 0.85 [-8.02, +7.22] (n=2, n.s., needs 6) |" in md  # sd 0.85 pp
    capped = render.markdown(sweep, build(sweep, KNOWN, keys_of(sweep), target=Target(1.0, 5)))
    assert "(n=2, n.s., needs 5, capped: would need 6)" in capped and "needs 3)" in capped
    assert "needs N: the seeds a cell's 95 % interval needs to be no wider than ±1 pp" in md
    assert ("Budget: profile smoke; data synthetic; epochs 4; training images 512; test images 200; amp bf16; device cpu; "
            "3 seed(s).") in md
    rows = list(csv.DictReader(io.StringIO(render.csv_text(sweep, cells))))
    assert list(rows[0])[2:13] == ["column", "metric", "mean", "std", "n", "ci_low", "ci_high", "p_value", "winning",
                                   "significant", "paper"]
    g1 = next(r for r in rows if r["density"] == "1" and r["column"] == "grasp")
    assert (g1["mean"], g1["std"], g1["n"], g1["winning"], g1["significant"], g1["sign_agrees"]) == (
        "0.3000", "0.2000", "3", "1", "0", "1")
    assert (g1["ci_low"], g1["ci_high"]) == ("-0.1968", "0.7968") and g1["needs"] == "3"
    assert next(r for r in rows if r["density"] == "2" and r["column"] == "grasp")["needs"] == "6"
    assert next(r for r in rows if r["density"] == "1" and r["column"] == "snip")["needs"] == ""  # one seed: no sd
    assert next(r for r in rows if r["density"] == "4" and r["column"] == "snip")["mean"] == "missing"
    tex = render.latex(sweep, cells)
    assert r"(+) +0.30 $\pm$ 0.20 [-0.20, +0.80] (n=3, n.s., needs 3) & (+) +0.40 \checkmark" in tex
    table = json.loads(render.json_text(sweep, cells))
    assert (table["effect"], table["max_seeds"]) == (1.0, 10)
    needs = [c["needs"] for c in table["cells"] if c["row"] in (["1"], ["2"])]
    assert needs == [None, None, 3, 6]  # SNIP's (one seed each), then GraSP's
    assert r"\begin{tabular}{lrrrr}" in tex


def test_best_and_second_marks_per_row():
    sweep = sweeps.load("table1")
    runs = [run("kl", r, 0, d) for r, d in (("0", 0.7), ("0.125", 0.5), ("0.25", -0.1), ("0.375", 0.6))]
    cells = build(sweep, runs, keys_of(sweep))
    marks = {c.column: c.mark for c in cells if c.row == ("kl",)}
    assert marks == {"0": "best", "0.125": "", "0.25": "", "0.375": "second"}
    md = render.markdown(sweep, cells)
    assert "**(+) +0.70 (n=1)**" in md and "<u>(+) +0.60 (n=1)</u>" in md
    assert r"\textbf{(+) +0.70 (n=1)}" in render.latex(sweep, cells)


def test_cell_keys_are_the_identity_of_the_trials_the_sweep_runs():
    sweep = sweeps.load("table2")
    keys = cell_keys(sweep, sweeps.Setting("smoke"))
    assert len(set(keys)) == len(keys) == 10
    assert cell_keys(sweep, sweeps.Setting("smoke", extra=(
        "threads=1", "jobs=2", "store.root=/elsewhere", "data.cache=/tmp/c", "train.progress=true"))) == keys
    assert cell_keys(sweep, sweeps.Setting("smoke", extra=("optim.weight_decay=5e-4",)))[0] != keys[0]
    assert cell_keys(sweep, sweeps.Setting("quick", "synthetic"))[0] != keys[0]


def test_builder_cli_reads_mlflow_and_attaches_the_table_to_the_sweep_run(tmp_path, tracking_uri, capsys):
    mlflow.set_tracking_uri(tracking_uri)
    exp = mlflow.create_experiment("table3", artifact_location=(tmp_path / "art").as_uri())
    keys = dict(zip((tuple(c.values()) for c in sweeps.load("table3").cells()),
                    cell_keys(sweeps.load("table3"), sweeps.Setting("smoke"))))
    for seed, delta, key in ((0, -0.5, keys[("filter", "grasp")]), (1, -0.3, keys[("filter", "grasp")]),
                             (0, 9.9, "a-run-of-another-experiment-setting")):
        with mlflow.start_run(experiment_id=exp):
            mlflow.set_tags({"role": "ticket", "profile": "smoke", "cell_key": key, "seed": str(seed)})
            mlflow.log_metrics({"delta_pp": delta})
    assert tables.main(["table3", "--profile", "smoke", "--out", str(tmp_path / "out"),
                        "--tracking-uri", tracking_uri]) == 0
    out = capsys.readouterr().out
    assert ("| Filters (structured LTH) | missing | (-) -0.79 | (-) -0.40 ± 0.14 [-1.67, +0.87] (n=2, n.s., "
            "needs 3) | (-) -0.11 ✓ |") in out
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["table3.csv", "table3.json", "table3.md", "table3.tex"]
    args = ["table3", "--profile", "smoke", "--out", str(tmp_path / "out"), "--tracking-uri", tracking_uri]
    assert tables.main(args) == 0  # rebuilt: attached again to the same sweep run, no new run
    table_runs = mlflow.search_runs([exp], filter_string="tags.role = 'sweep'", output_format="list")
    assert len(table_runs) == 1 and table_runs[0].data.tags["cells_measured"] == "1"
    files = {f.path for f in mlflow.MlflowClient().list_artifacts(table_runs[0].info.run_id)}
    assert files == {"table3.csv", "table3.json", "table3.md", "table3.tex"}


def test_the_builder_names_a_missing_data_folder_in_one_line(tmp_path, capsys):
    assert tables.main(["table2", "--profile", "quick", "--data", "imagefolder", "--data-root",
                        str(tmp_path / "nope"), "--root", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("lottery: error: data.root=") and "does not exist" in err and "\n" not in err


def test_a_paper_grid_runs_on_another_model_and_its_cells_are_that_models_alone():
    from lottery.errors import LotteryError

    default, other = sweeps.load("table2"), sweeps.load("table2", "resnet18")
    assert "model=resnet18" in other.overrides and "model=resnet32" not in other.overrides
    assert other.title == "Table 2: tickets at initialization (resnet18)" and "(resnet32)" in default.title
    mine = cell_keys(other, sweeps.Setting("smoke"))
    assert not set(mine) & set(cell_keys(default, sweeps.Setting("smoke")))
    cells = build(other, [run("grasp", 1, 0, 0.5)], keys_of(other))
    assert "Ours are resnet18's; the paper's values are its own network's" in render.markdown(other, cells)
    composed = sweeps.compose_cells(other, sweeps.Setting("smoke"))
    why = sweeps.inapplicable(sweeps.designs(composed))  # resnet18 can lose 4 blocks: p = 5 is not applicable
    skipped = tuple(c for (c, _), w in zip(composed, why) if w)
    assert [c["density"] for c in skipped] == ["5", "5"] and "density=5 is above resnet18's maximum of 4" in why[4]
    lists = [[] if c in skipped else [0] for c in other.cells()]
    assert "density=1,2,3,4" in sweeps.commands(other, sweeps.Setting("smoke"), lists)[0]
    na = {(c.row, c.column): c for c in build(other, [], mine, na=why)}
    md = render.markdown(other, list(na.values()))
    assert na[(("5",), "grasp")].na and "| 5 | n/a |" in md and "2 cell(s) n/a on this model (density=5" in md
    with pytest.raises(LotteryError, match=r"table4 sweeps its own models \(resnet32, resnet56\)"):
        sweeps.load("table4", "resnet18")
    with pytest.raises(LotteryError, match="unknown model 'resnet7'; choose one of: convnext_tiny, custom"):
        sweeps.load("table2", "resnet7")


def test_cells_of_a_dense_network_at_chance_are_marked_and_judged_inconclusive():
    from lottery.paper import claims

    sweep = sweeps.load("table2")
    at_chance = [run("grasp", 1, s, 0.5) for s in range(3)]
    for r in at_chance:
        r["tags"]["dense_at_chance"] = "true"
    cells = build(sweep, at_chance + [run("grasp", 2, s, 0.5 + s / 10) for s in range(3)], keys_of(sweep))
    marked = {(c.row, c.column): c.at_chance for c in cells if c.ours is not None}
    assert marked == {(("1",), "grasp"): True, (("2",), "grasp"): False}
    md = render.markdown(sweep, cells)
    assert "dense at chance" in md and "1 cell(s) rest on a dense network that ended at chance accuracy" in md
    table = json.loads(render.json_text(sweep, cells))
    sides = {tuple(c["row"]): claims.side(c, +1) for c in table["cells"] if c["column"] == "grasp" and c["n"]}
    assert sides == {("1",): claims.INCONCLUSIVE, ("2",): claims.AGREE}

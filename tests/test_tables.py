"""Sweep files and the table builder: one source of truth per table, cells that could be wrong."""

import csv
import io

import mlflow
import pytest

from lottery import sweeps, tables
from lottery.config import validate
from tests.conftest import compose_cfg


@pytest.mark.parametrize("profile", ["paper", "quick", "smoke"])
@pytest.mark.parametrize("name", sweeps.available())
def test_every_sweep_composes_under_every_profile(name, profile):
    sweep = sweeps.load(name)
    for cell in sweep.cells():
        overrides = [*sweep.overrides, *(f"{k}={v}" for k, v in cell.items()), f"profile={profile}",
                     "data=synthetic"]
        validate(compose_cfg(*overrides))


def test_every_paper_artefact_has_a_sweep():
    assert set(sweeps.available()) == {"table1", "table1_reinit", "table2", "table3", "table4", "table5", "figure3"}
    assert len(sweeps.load("table4").cells()) == 7 and len(sweeps.load("table1").cells()) == 20


def test_sweep_commands_are_hydra_multiruns():
    cmds = sweeps.commands(sweeps.load("table4"), "smoke", "synthetic", None, 3, ["train.epochs=2"])
    assert len(cmds) == 2  # one per grid
    assert cmds[1][3:] == ["-m", "mode=init", "criterion=grasp", "model=resnet56", "density=3,4,5,12",
                           "profile=smoke", "seed=0,1,2", "tracking.experiment=table4", "data=synthetic",
                           "train.epochs=2"]


def run(criterion, density, seed, delta, dense=90.0, cka=0.9):
    return {"tags": {"override.criterion": criterion, "override.density": str(density), "override.seed": str(seed)},
            "metrics": {"delta_pp": delta, "dense_accuracy": dense, "cka": cka}}


KNOWN = [run("grasp", 1, 0, 0.5), run("grasp", 1, 1, 0.3), run("grasp", 1, 2, 0.1),  # mean 0.3, std 0.2
         run("snip", 1, 0, -0.4), run("snip", 2, 0, 0.1),
         run("grasp", 2, 0, -1.0, dense=90.0), run("grasp", 2, 1, 0.2, dense=91.0)]


def test_cells_aggregate_seeds_mark_signs_and_leave_missing_cells_missing():
    sweep = sweeps.load("table2")
    cells = {(c.row, c.column): c for c in tables.build(sweep, KNOWN)}
    g1 = cells[(("1",), "grasp")]
    assert g1.ours.mean == pytest.approx(0.3) and g1.ours.std == pytest.approx(0.2) and g1.ours.n == 3
    assert g1.winning and g1.paper == 0.40 and g1.sign_agrees
    s1 = cells[(("1",), "snip")]
    assert not s1.winning and s1.ours.std is None and s1.sign_agrees is False  # paper +0.08
    g2 = cells[(("2",), "grasp")]
    assert g2.ours.mean == pytest.approx(-0.4) and not g2.winning
    assert cells[(("3",), "snip")].ours is None  # missing, not 0
    # xi = std: one standard deviation of the dense accuracy over the cell's seeds (0.707 pp)
    g2_std = {(c.row, c.column): c for c in tables.build(sweep, KNOWN, xi="std")}[(("2",), "grasp")]
    assert g2_std.winning
    assert {(c.row, c.column): c for c in tables.build(sweep, KNOWN, xi="1")}[(("1",), "snip")].winning


def test_three_formats_render_the_same_cells():
    sweep = sweeps.load("table2")
    cells = tables.build(sweep, KNOWN)
    md = tables.markdown(sweep, cells)
    assert "| 1 | (+) +0.30 ± 0.20 (n=3) | (+) +0.40 ✓ |" in md.replace("(-) -0.40 (n=1) | (+) +0.08 ✗ | ", "")
    assert "| 3 | missing | (-) -0.50 | missing | (+) +0.34 |" in md
    rows = list(csv.DictReader(io.StringIO(tables.csv_text(sweep, cells))))
    g1 = next(r for r in rows if r["density"] == "1" and r["column"] == "grasp")
    assert (g1["mean"], g1["std"], g1["n"], g1["winning"], g1["sign_agrees"]) == ("0.3000", "0.2000", "3", "1", "1")
    assert next(r for r in rows if r["density"] == "4" and r["column"] == "snip")["mean"] == "missing"
    tex = tables.latex(sweep, cells)
    assert r"(+) +0.30 $\pm$ 0.20 (n=3) & (+) +0.40 \checkmark" in tex and r"\begin{tabular}{lrrrr}" in tex


def test_best_and_second_marks_per_row():
    sweep = sweeps.load("table1")
    runs = [{"tags": {"override.criterion": "kl", "override.rewind_epoch": r, "override.seed": "0"},
             "metrics": {"delta_pp": d}} for r, d in (("0", 0.7), ("0.125", 0.5), ("0.25", -0.1), ("0.375", 0.6))]
    cells = tables.build(sweep, runs)
    marks = {c.column: c.mark for c in cells if c.row == ("kl",)}
    assert marks == {"0": "best", "0.125": "", "0.25": "", "0.375": "second"}
    md = tables.markdown(sweep, cells)
    assert "**(+) +0.70 (n=1)**" in md and "<u>(+) +0.60 (n=1)</u>" in md
    assert r"\textbf{(+) +0.70 (n=1)}" in tables.latex(sweep, cells)


def test_builder_cli_reads_mlflow_and_logs_a_table_run(tmp_path, tracking_uri, capsys):
    mlflow.set_tracking_uri(tracking_uri)
    exp = mlflow.create_experiment("table3", artifact_location=(tmp_path / "art").as_uri())
    for seed, delta in ((0, -0.5), (1, -0.3)):
        with mlflow.start_run(experiment_id=exp):
            mlflow.set_tags({"role": "ticket", "profile": "smoke", "override.structure": "filter",
                             "override.criterion": "grasp", "override.seed": str(seed)})
            mlflow.log_metrics({"delta_pp": delta})
    assert tables.main(["table3", "--profile", "smoke", "--out", str(tmp_path / "out"),
                        "--tracking-uri", tracking_uri]) == 0
    out = capsys.readouterr().out
    assert "| Filters (structured LTH) | missing | (-) -0.79 | (-) -0.40 ± 0.14 (n=2) | (-) -0.11 ✓ |" in out
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["table3.csv", "table3.md", "table3.tex"]
    table_runs = mlflow.search_runs([exp], filter_string="tags.role = 'table'", output_format="list")
    assert len(table_runs) == 1

"""The report: every verdict rule of docs/design.md §8.1 on constructed cells, and a page built from MLflow."""

from html.parser import HTMLParser

import mlflow

from lottery.experiment import sweeps
from lottery.paper import claims, report, tables
from tests.helpers import cell_keys


def cell(row, column, mean, ci=None, n=3, p=None, seeds=None, metric="delta_pp", needs=None):
    lo, hi = ci if ci else (None, None)
    return {"row": list(row), "column": column, "metric": metric, "mean": mean, "n": n, "ci_low": lo,
            "ci_high": hi, "p_value": p, "seeds": seeds or {}, "needs": needs}


def table2(grasp, snip=None):
    """Table 2's cells: ``grasp``/``snip`` map p to a cell (or None for a missing one)."""
    snip = snip or {}
    cells = []
    for p in "12345":
        cells.append(snip.get(p) or cell([p], "snip", 0.0, n=0))
        cells.append(grasp.get(p) or cell([p], "grasp", 0.0, n=0))
    return {"rows": ["density"], "cells": cells}


def verdict_of(tables_, cid):
    return next(c for c in claims.judge(tables_) if c["id"] == cid)


def test_all_claims_supported_contradicted_inconclusive_and_not_run():
    wins = {p: cell([p], "grasp", 0.5, (0.2, 0.8)) for p in "12345"}
    assert verdict_of({"table2": table2(wins)}, "C3")["verdict"] == "supported"
    one_loses = {**wins, "3": cell(["3"], "grasp", -0.5, (-0.8, -0.2))}
    c3 = verdict_of({"table2": table2(one_loses)}, "C3")
    assert c3["verdict"] == "contradicted" and (c3["agree"], c3["disagree"]) == (4, 1)
    noisy = {**wins, "3": cell(["3"], "grasp", 0.1, (-0.3, 0.5))}
    assert verdict_of({"table2": table2(noisy)}, "C3")["verdict"] == "inconclusive"
    missing = {p: c for p, c in wins.items() if p != "5"}
    assert verdict_of({"table2": table2(missing)}, "C3")["verdict"] == "not run"
    assert verdict_of({}, "C3")["verdict"] == "not run"
    smaller = table2({p: c for p, c in wins.items() if p != "5"})  # a model that cannot lose five blocks
    next(c for c in smaller["cells"] if c["row"] == ["5"] and c["column"] == "grasp")["na"] = "p above its maximum"
    c3 = verdict_of({"table2": smaller}, "C3")
    assert c3["verdict"] == "supported" and c3["cells"] == 4


def test_a_claim_about_most_cells_and_single_seed_cells_decided_by_mcnemar():
    def table1(sides):
        cells = [cell([crit], r, {"a": 0.5, "d": -0.5, "i": 0.1}[s], {"a": (0.1, 0.9), "d": (-0.9, -0.1),
                                                                        "i": (-0.3, 0.5)}[s])
                 for (crit, r), s in zip(((c, r) for c in "abcde" for r in ("0", "0.125", "0.25", "0.375")), sides)]
        return {"table1": {"rows": ["criterion"], "cells": cells}}

    assert verdict_of(table1("a" * 11 + "d" * 9), "C1")["verdict"] == "supported"
    assert verdict_of(table1("a" * 10 + "i" * 10), "C1")["verdict"] == "inconclusive"  # 10 of 20 is not most
    assert verdict_of(table1("d" * 11 + "i" * 9), "C1")["verdict"] == "contradicted"
    assert claims.side(cell(["1"], "snip", -0.4, n=1, p=0.01), -1) == claims.AGREE
    assert claims.side(cell(["1"], "snip", 0.4, n=1, p=0.01), -1) == claims.DISAGREE
    assert claims.side(cell(["1"], "snip", -0.4, n=1, p=0.2), -1) == claims.INCONCLUSIVE


def test_paired_claims_and_claims_on_means():
    seeds = lambda *d: {str(i): {"delta_pp": v, "cka": v} for i, v in enumerate(d)}  # noqa: E731
    t3 = {"rows": ["structure"], "cells": [
        cell(["layer"], "snip", 0.3, seeds=seeds(0.3, 0.4, 0.5)), cell(["filter"], "snip", -0.6, seeds=seeds(-0.7, -0.6, -0.5)),
        cell(["layer"], "grasp", 0.3, seeds=seeds(0.3, 0.4, 0.5)), cell(["filter"], "grasp", 0.3, seeds=seeds(0.5, 0.2, 0.5))]}
    c5 = verdict_of({"table3": t3}, "C5")
    assert (c5["agree"], c5["inconclusive"], c5["verdict"]) == (1, 1, "inconclusive")  # GraSP: -0.2, 0.2, 0: spans 0
    rows = [("resnet32", p) for p in ("1", "3", "4")] + [("resnet56", p) for p in ("3", "4", "5", "12")]
    metrics = ("flops_reduction_pct", "memory_reduction_pct", "co2_reduction_pct", "speedup")
    rising = {"rows": ["model", "density"], "cells": [cell(r, m, float(r[1]), n=1, metric=m) for r in rows for m in metrics]}
    assert verdict_of({"table4": rising}, "C6")["verdict"] == "supported"
    rising["cells"][0]["mean"] = 99.0  # ResNet32 FLOPs no longer rise with p
    c6 = verdict_of({"table4": rising}, "C6")
    assert c6["verdict"] == "contradicted" and c6["disagree"] == 1
    fig = {"rows": ["criterion"], "cells": [cell(["l1"], "delta_pp", 0.0, n=1, seeds={"0": {
        "blocks": {"stage": [0, 0, 1, 1, 2], "scores": [0.1, 0.2, 0.3, 0.4, 0.2]}}})]}
    assert verdict_of({"figure3": fig}, "C9")["verdict"] == "contradicted"  # stage 3 (0.2) below stage 2 (0.35)


def timed(*seeds, ticket=10.0, dense=20.0):
    """Per-seed values of a cell whose seeds took ``ticket`` and ``dense`` seconds to train (one dense lineage)."""
    return {str(s): {"delta_pp": 0.1, "train_seconds": ticket, "dense_train_seconds": dense, "dense_key": f"d{s}"}
            for s in seeds}


def settled(needs_p3, n=3, seeds=None, snip=None):
    """Table 2 on which C3 is inconclusive at p = 3 (the other GraSP cells agree), with the seeds each cell needs."""
    grasp = {p: cell([p], "grasp", 0.5, (0.2, 0.8), seeds=timed(0, 1, 2), needs=3) for p in "12345"}
    grasp["3"] = cell(["3"], "grasp", 0.1, (-0.3, 0.5), n=n, seeds=seeds or timed(*range(n)), needs=needs_p3)
    return {"table2": {**table2(grasp, snip), "table": "table2", "effect": 1.0, "max_seeds": 10}}


def test_an_inconclusive_claim_says_what_its_intervals_settle_and_where_they_exclude_the_papers_value():
    t = settled(3)
    for c in t["table2"]["cells"]:
        c["paper"] = {"snip": None, "grasp": {"1": 0.40, "2": 0.72, "3": 0.34, "4": 0.41, "5": 0.12}[c["row"][0]]}[
            c["column"]]
    # grasp: [0.2, 0.8] at p = 1, 2, 4, 5 and [-0.3, 0.5] at p = 3; only p = 5's +0.12 lies outside its interval
    assert verdict_of(t, "C3")["ruled_out"] == (
        "every cell's 95 % interval lies within [-0.30, +0.80] pp; the paper's value lies outside the cell's own "
        "interval in 1 of 5 cells: grasp density=5: +0.12 below [+0.20, +0.80]")
    t["table2"]["columns"] = "criterion"  # a table that names its columns names them in the label
    t["table2"]["cells"][5].update(ci_low=-1.5, ci_high=0.3)
    assert verdict_of(t, "C3")["ruled_out"].endswith(
        "in 2 of 5 cells: criterion=grasp density=3: +0.34 above [-1.50, +0.30]; criterion=grasp density=5: +0.12 "
        "below [+0.20, +0.80]")
    t["table2"]["cells"][9]["at_chance"] = True  # p = 5's dense network did not learn: no finding
    assert verdict_of(t, "C3")["ruled_out"] == (
        "the 95 % intervals of 4 of its 5 cells (the others: one seed, or a dense network that did not learn) lie "
        "within [-1.50, +0.80] pp; the paper's value lies outside the cell's own interval in 1 of 4 cells: "
        "criterion=grasp density=3: +0.34 above [-1.50, +0.30]")
    assert verdict_of({"table2": table2({p: cell([p], "grasp", 0.5, (0.2, 0.8)) for p in "12345"})},
                      "C3")["ruled_out"] is None  # supported: nothing left to settle


def test_an_inconclusive_claim_says_whether_more_seeds_could_decide_it_and_at_what_cost():
    yes = verdict_of(settled(7), "C3")
    assert yes["verdict"] == "inconclusive"
    # 4 tickets (seeds 3-6) of 10 s and their 4 dense networks of 20 s
    assert yes["more_seeds"] == ("yes, if its deltas are at least ±1 pp: up to 7 seeds per cell (the largest need "
                                 "among its cells) narrow every interval to that; 4 more trial(s), ~2 min of training")
    trained = {"3": cell(["3"], "snip", -0.1, (-0.5, 0.3), n=7, seeds=timed(*range(7)), needs=3)}
    assert verdict_of(settled(7, snip=trained), "C3")["more_seeds"].endswith(
        "4 more trial(s), ~40 s of training")  # another cell of the table trained seeds 3-6's dense networks
    capped = verdict_of(settled(14), "C3")["more_seeds"]
    # seeds 3-9 within the cap (7 x 30 s), seeds 3-13 beyond it (11 x 30 s)
    assert capped == ("not within 10 seeds: its cells would need up to 14; the cap's 7 more trial(s) (~4 min of "
                      "training) leave some interval wider than ±1 pp; --max-seeds 14 would narrow every interval to "
                      "±1 pp with 11 more trial(s), ~6 min of training")
    spent = verdict_of(settled(14, n=10), "C3")["more_seeds"]
    assert spent == ("not within 10 seeds: its cells would need up to 14; its cells have all the cap allows; "
                     "--max-seeds 14 would narrow every interval to ±1 pp with 4 more trial(s), ~2 min of training")
    assert verdict_of(settled(3), "C3")["more_seeds"] == (
        "no, not at ±1 pp: each cell has the seeds its pilot asked for (at most 3), and more would only resolve a "
        "difference smaller than that")
    wide = settled(3)
    wide["table2"]["cells"][5].update(ci_low=-1.5, ci_high=1.7)  # grasp p = 3: its sd came out above the pilot's
    assert verdict_of(wide, "C3")["more_seeds"] == (
        "no, not at ±1 pp: each cell has the seeds its pilot asked for (at most 3); 1 of its 5 intervals came out "
        "wider than ±1 pp, their sd above the pilot's, and seeds added for that would be a second look at the data, "
        "which costs the test its level (docs/design.md §8.2.1)")
    assert verdict_of(settled(None, n=1), "C3")["more_seeds"] == (
        "unknown until each cell has a pilot of 2 seeds or more (1 of its 5 cells lack one; --seeds auto runs it)")
    untimed = timed(0, 1, 2)
    untimed["1"]["train_seconds"] = None
    assert verdict_of(settled(7, seeds=untimed), "C3")["more_seeds"].endswith(
        "4 more trial(s), training time unknown: a seed of its cells logged no train_seconds or dense_train_seconds")
    old = settled(7)
    del old["table2"]["effect"]
    assert verdict_of(old, "C3")["more_seeds"] == "unknown: its table predates the seeds a cell needs; build it again"
    assert verdict_of(settled(7), "C4")["more_seeds"] is None  # not run: nothing to say


def test_a_paired_claim_needs_its_differences_seeds_in_both_cells_and_cka_has_no_effect_in_pp():
    seeds = lambda *d: {str(i): {"delta_pp": v, "cka": v} for i, v in enumerate(d)}  # noqa: E731
    t3 = {"rows": ["structure"], "table": "table3", "effect": 0.1, "max_seeds": 10, "cells": [
        cell(["layer"], "snip", 0.4, seeds=seeds(0.3, 0.4, 0.5)),
        cell(["filter"], "snip", -0.6, seeds=seeds(-0.7, -0.6, -0.5)),
        cell(["layer"], "grasp", 0.4, seeds=seeds(0.3, 0.4, 0.5)),
        cell(["filter"], "grasp", 0.4, seeds=seeds(0.5, 0.2, 0.5))]}
    c5 = verdict_of({"table3": t3}, "C5")  # GraSP's differences -0.2, 0.2, 0: sd 0.2 pp, at 0.1 pp 18 seeds
    assert c5["verdict"] == "inconclusive" and c5["more_seeds"].startswith(
        "not within 10 seeds: its cells would need up to 18; the cap's 14 more trial(s)")  # 7 seeds x both cells
    t2 = {"rows": ["density"], "table": "table2", "effect": 1.0, "max_seeds": 10, "cells": [
        cell([p], crit, 0.0, seeds=seeds(0.1, 0.2, 0.3) if crit == "grasp" else seeds(0.3, 0.1, 0.2))
        for p in "12345" for crit in ("snip", "grasp")]}
    c8 = verdict_of({"table2": t2}, "C8")
    assert c8["verdict"] == "inconclusive" and c8["more_seeds"].startswith("seeds do not decide it: its cells are no")


class Page(HTMLParser):
    def __init__(self):
        super().__init__()
        self.images, self.text = [], []

    def handle_starttag(self, tag, attrs):
        if tag == "img":
            self.images.append(dict(attrs)["src"])

    def handle_data(self, data):
        self.text.append(data)


def test_report_from_mlflow_inlines_every_plot_and_shows_every_table(tmp_path, capsys, new_store):
    tracking_uri = new_store(tmp_path / "own.db")  # no other test's tables
    mlflow.set_tracking_uri(tracking_uri)
    sweep = sweeps.load("table2")
    exp = mlflow.create_experiment("table2", artifact_location=(tmp_path / "art").as_uri())
    for c, key in zip(sweep.cells(), cell_keys(sweep, sweeps.Setting("smoke"))):
        for seed, d in enumerate((0.4, 0.6, 0.5) if c["criterion"] == "grasp" else (-0.1, 0.2, 0.0)):
            with mlflow.start_run(experiment_id=exp):
                mlflow.set_tags({"role": "ticket", "profile": "smoke", "cell_key": key, "seed": str(seed),
                                 "recipe": "sgd (lr 0.1) + step (milestones [2, 3])"})
                mlflow.log_metrics({"delta_pp": d, "cka": 0.9 if c["criterion"] == "grasp" else 0.8 + d,
                                    "train_seconds": 10.0, "dense_train_seconds": 20.0})
    args = ["--profile", "smoke", "--root", str(tmp_path), "--tracking-uri", tracking_uri]
    assert tables.main(["table2", *args]) == 0
    assert report.main(args) == 0
    out = tmp_path / "report" / "smoke"
    page = Page()
    page.feed((out / "index.html").read_text())
    text = " ".join(page.text)
    assert page.images and all(src.startswith("data:image/png;base64,") for src in page.images)
    assert "Table 2: tickets at initialization" in text and "Table 4" in text
    assert "not run:" in text and "make table4 PROFILE=smoke" in text  # a missing sweep says what to run, never 0
    md = (out / "report.md").read_text()
    # smoke runs on synthetic data: a banner above the claims, and verdicts that read as wiring checks
    assert md.index("**Wiring check, not findings.** The smoke profile trains on synthetic data") < md.index("| C3")
    assert ("| C3: GraSP tickets at initialization win at every p = 1..5 | **supported** (wiring check) | "
            "5 / 0 / 0 (of 5) |") in md
    assert ("| C4: SNIP tickets at initialization lose from p = 3 on | **inconclusive** (wiring check) | "
            "0 / 0 / 3 (of 3) |") in md
    assert "C1: " in md and "**not run**" in md
    assert "Could more seeds decide the inconclusive claims?" in md
    assert "- C4: no, not at ±1 pp: each cell has the seeds its pilot asked for (at most 3)" in md  # sd 0.15 pp: 3 seeds do
    assert "training time of every run included: 0.09 h" in md  # 30 tickets x 10 s + one dense network's 20 s
    assert "recipe of table2: sgd (lr 0.1) + step (milestones [2, 3])" in md  # which recipe trained the runs
    assert report.main(args) == 0  # rebuilt: the report run is replaced, not added
    runs = mlflow.search_runs(experiment_names=["report"], output_format="list")
    assert len(runs) == 1


def test_a_report_without_runs_says_what_to_run(tmp_path, new_store):
    uri = new_store(tmp_path / "empty.db")
    assert report.main(["--profile", "quick", "--root", str(tmp_path), "--tracking-uri", uri]) == 0
    md = (tmp_path / "report" / "quick" / "report.md").read_text()
    assert "No table of the quick profile in MLflow yet: run `make tables PROFILE=quick`" in md
    assert "**Reduced budget.** The quick profile trains 8 epochs (the paper: 200)" in md and "(wiring check)" not in md
    assert md.count("**not run**") == 13  # C1-C9, Q1-Q2 beyond the paper, Q3-Q4 on language models
    assert "## Beyond the paper: language models" in md


def test_a_trial_that_failed_and_then_finished_is_not_counted_as_failed(tmp_path, new_store):
    from mlflow import MlflowClient

    mlflow.set_tracking_uri(new_store(tmp_path / "own.db"))
    exp = mlflow.create_experiment("t", artifact_location=(tmp_path / "art").as_uri())
    client = MlflowClient()
    for key, statuses in (("a", ("FAILED", "FINISHED")), ("b", ("KILLED",)), ("c", ("RUNNING",)),
                          ("d", ("FINISHED",))):
        for status in statuses:
            run = client.create_run(exp, tags={"role": "ticket", "profile": "smoke", "config_key": key})
            if status != "RUNNING":
                client.set_terminated(run.info.run_id, status)
    assert report._failed(exp, "smoke") == 1  # b; a finished on its retry, c still runs


def test_an_unknown_profile_is_one_line_naming_the_profiles_with_tables(tmp_path, capsys, new_store):
    uri = new_store(tmp_path / "own.db")
    mlflow.set_tracking_uri(uri)
    exp = mlflow.create_experiment("table2", artifact_location=(tmp_path / "art").as_uri())
    with mlflow.start_run(experiment_id=exp):
        mlflow.set_tags({"role": "sweep", "profile": "smoke", "table": "table2"})
    assert report.main(["--profile", "nosuch", "--root", str(tmp_path), "--tracking-uri", uri]) == 2
    err = capsys.readouterr().err.strip()
    assert err == ("lottery: error: unknown profile 'nosuch': profiles with tables in this store: smoke "
                   "(profiles: paper, quick, smoke)")
    assert not (tmp_path / "report").exists()  # no empty report written


def test_a_table_of_another_data_set_is_its_own_never_the_papers(tmp_path, capsys, new_store):
    """Table 2 on digits beside Table 2 on the profile's own data: each table lands in its own
    folder and names its data set in its budget line; the report takes the profile's own unless
    told ``--data``, and then says which data set its verdicts answer on."""
    uri = new_store(tmp_path / "own.db")
    mlflow.set_tracking_uri(uri)
    sweep = sweeps.load("table2")
    exp = mlflow.create_experiment("table2", artifact_location=(tmp_path / "art").as_uri())
    for data, delta in (("synthetic", 0.5), ("digits", -0.7)):
        for key in cell_keys(sweep, sweeps.Setting("smoke", data)):
            for seed in range(3):
                with mlflow.start_run(experiment_id=exp):
                    mlflow.set_tags({"role": "ticket", "profile": "smoke", "cell_key": key, "seed": str(seed)})
                    mlflow.log_param("data.name", data)
                    mlflow.log_metrics({"delta_pp": delta + 0.1 * seed})
    args = ["--profile", "smoke", "--root", str(tmp_path), "--tracking-uri", uri]
    assert tables.main(["table2", *args]) == 0
    assert tables.main(["table2", *args, "--data", "synthetic"]) == 0  # the profile's own data, named: its folder
    assert tables.main(["table2", *args, "--data", "digits"]) == 0  # built last: the newest table of the two
    assert sorted(f.name for f in (tmp_path / "tables").iterdir()) == ["smoke", "smoke-digits"]
    own, digits = (tmp_path / "tables" / f / "table2.md" for f in ("smoke", "smoke-digits"))
    assert "+0.60" in own.read_text() and "Budget: profile smoke; data synthetic;" in own.read_text()
    assert "-0.60" in digits.read_text() and "Budget: profile smoke; data digits;" in digits.read_text()
    assert report.main(args) == 0
    md = (tmp_path / "report" / "smoke" / "report.md").read_text()
    assert "data synthetic" in md and "data digits" not in md and "**Wiring check" in md
    assert report.main([*args, "--data", "digits"]) == 0
    md = (tmp_path / "report" / "smoke-digits" / "report.md").read_text()
    assert "data digits" in md and "data synthetic" not in md
    assert md.startswith("# lottery: the reproduction at a glance (smoke profile, digits)")
    assert "**On `data=digits`.** The tables ran on this data set, at the smoke profile's budget" in md
    assert "not run: `make table4 PROFILE=smoke DATA=digits`" in md
    assert report.main([*args, "--data", "synthetic"]) == 0  # the profile's own data, named: the same report
    assert len(mlflow.search_runs(experiment_names=["report"], output_format="list")) == 2
    capsys.readouterr()
    assert report.main([*args, "--data", "nosuch"]) == 2
    assert capsys.readouterr().err.startswith("lottery: error: In 'config': Could not find 'data/nosuch'")

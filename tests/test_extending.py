"""docs/design.md §13 is code that runs: each kind's example module and YAML file are taken from the
document itself, registered, listed by ``--help`` and run as a smoke trial, so the document cannot
drift from the code. And the guard rails a newcomer meets: a setting declared without ``opt()`` is
refused when its kind registers, in one line naming it."""

from __future__ import annotations

import re
import shutil
import sys
import types
from contextlib import contextmanager
from dataclasses import dataclass

import mlflow
import pytest
from hydra.core.config_store import ConfigStore

from lottery import help as help_page
from lottery.config import CriterionConfig, Registry, opt
from lottery.experiment import trial
from lottery.pruning.criteria import CRITERIA
from tests.helpers import CONF, REPO, compose_cfg

FENCE = re.compile(r"```(\w+)\n(.*?)```", re.DOTALL)


def examples() -> list[dict]:
    """Each example of §13: its module (a python block whose first line names its path), its YAML
    file (a yaml block whose first line names its path) and the trial that runs it (a console block)."""
    text = (REPO / "docs" / "design.md").read_text().split("\n## §13", 1)[1]
    found, current = [], None
    for lang, body in FENCE.findall(text):
        first, _, rest = body.partition("\n")
        if lang == "python" and first.startswith("# lottery/"):
            current = {"module": first[2:].strip(), "code": body}
            found.append(current)
        elif lang == "yaml" and first.startswith("# conf/") and current is not None:
            current["yaml"], current["yaml_text"] = first[2:].strip(), rest
        elif lang == "console" and current is not None:
            current["run"] = body.strip().split("python -m lottery", 1)[1].split()
    return found


EXAMPLES = examples()


@contextmanager
def registered_for_now():
    """Whatever a block registers is gone again afterwards (its kind, and its settings stored with
    Hydra): the other tests see the registries as shipped."""
    saved = [(r, dict(r._items), dict(r.settings)) for r in Registry.every]
    schemas = ConfigStore.instance().repo["schema"]
    stored = {group: set(options) for group, options in schemas.items()}
    try:
        yield
    finally:
        for r, items, settings in saved:
            r._items, r.settings = items, settings
        for group in list(schemas):
            for option in set(schemas[group]) - stored.get(group, set()):
                del schemas[group][option]


def load_example(example: dict) -> None:
    """Execute an example's module as the module it would be in the package (dataclasses and
    OmegaConf resolve its annotations through ``sys.modules``)."""
    name = example["module"].removesuffix(".py").replace("/", ".")
    module = types.ModuleType(name)
    sys.modules[name] = module
    try:
        exec(compile(example["code"], f"docs/design.md §13: {example['module']}", "exec"), module.__dict__)
    finally:
        sys.modules.pop(name, None)


def test_the_document_has_an_example_per_kind():
    kinds = {e["module"].split("/")[-2] for e in EXAMPLES}
    assert {"criteria", "sources", "networks", "modes", "optimizers", "schedules"} <= kinds, kinds
    for e in EXAMPLES:
        assert {"yaml", "run"} <= set(e), f"{e['module']}: a YAML file and the trial that runs it follow its code"


@pytest.mark.slow
@pytest.mark.parametrize("example", EXAMPLES, ids=[e["module"].split("/")[-1] for e in EXAMPLES])
def test_each_example_registers_shows_in_help_and_runs(example, tmp_path, tracking_uri, monkeypatch):
    conf = tmp_path / "conf"
    shutil.copytree(CONF, conf)
    (conf.parent / example["yaml"]).write_text(example["yaml_text"])
    monkeypatch.setattr(help_page, "CONF", conf)
    group, option = example["yaml"].split("/")[1], example["yaml"].split("/")[-1].removesuffix(".yaml")
    registry = next(r for r in Registry.every if r.group == group)
    with registered_for_now():
        load_example(example)
        assert option in registry, f"{example['module']} registers {group}={option}"
        line = re.search(rf"^   [ *]{option} +(.*)$", help_page.text({}), re.MULTILINE)
        assert line and line.group(1) == getattr(registry[option], "doc", line.group(1)) != ""
        cfg = compose_cfg(*example["run"], f"paths.root={tmp_path / 'root'}", f"tracking.uri={tracking_uri}",
                          f"tracking.experiment={tmp_path.name}", "tracking.log_model=false", "threads=1", conf=conf)
        out = trial.run(cfg)
    assert 0 <= out["accuracy"] <= 100
    assert mlflow.get_run(out["run_id"]).data.params[f"{group}.{registry.key}"] == option  # the trial ran with it


def test_a_setting_without_opt_is_refused_when_its_kind_registers():
    @dataclass
    class Bare(CriterionConfig):
        name: str = opt("doc_bare", "a criterion whose setting has no help")
        alpha: float = 0.5

    with registered_for_now(), pytest.raises(TypeError) as e:
        CRITERIA.add("doc_bare", object(), Bare)
    line = str(e.value)
    assert "\n" not in line and "alpha" in line and "opt(" in line and "doc_bare" in line


def test_help_lists_the_keys_a_kind_declares():
    assert "criterion.span (angular_distance) = 1:" in help_page.text({})

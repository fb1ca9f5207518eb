"""The package reads as its layout says: at most eight modules at the top, layers checked by the
linter (which fails on an upward import), families inside ``lottery/networks``, the input size
inside the source contract, every reference to the design document pointing at a section it has,
no function grows a long chain of loose parameters, and every concept with kinds has one home."""

import ast
import os
import re
import shutil
import subprocess
import sys

from tests.helpers import REPO

PACKAGE = REPO / "lottery"
CONTEXT = {"self", "cls", "cfg", "ctx"}  # the config or the trial's context may come on top


def sources(exclude=()):
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE).as_posix()
        if not any(rel.startswith(e) for e in exclude):
            yield rel, path.read_text()


def test_no_function_takes_more_than_six_parameters_besides_the_config_or_the_context():
    long = []
    for rel, text in sources():
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                a = node.args
                names = [x.arg for x in (*a.posonlyargs, *a.args, *a.kwonlyargs) if x.arg not in CONTEXT]
                if len(names) > 6:
                    long.append(f"{rel}:{node.lineno} {node.name}({', '.join(names)})")
    assert not long, long


def test_nothing_outside_the_models_package_names_a_familys_modules_or_parameters():
    internals = re.compile(r"resnet_plan|\.plan\b|\bPlan\b|\.fc\b|\bconv1\b|\bbn1\b|\.blocks\[|\"blocks\.\d|"
                           r"cifar_resnet\.|BasicBlock\(")
    found = [f"{rel}: {m.group(0)}" for rel, text in sources(exclude=("networks/", "config.py"))
             for m in internals.finditer(text)]
    assert not found, found


def test_the_input_size_is_a_literal_of_the_source_contract_alone():
    found = [rel for rel, text in sources(exclude=("training/sources/base.py",))
             if re.search(r"\b32\s*,\s*32\b|3, 32\b", text)]
    assert not found, found


def test_modules_hold_one_job_each_and_the_networks_face_is_a_face():
    long = [f"{rel}: {text.count(chr(10))} lines" for rel, text in sources() if text.count("\n") > 400]
    assert not long, long
    assert (PACKAGE / "networks" / "__init__.py").read_text().count("\n") < 60


def test_every_registry_is_created_in_the_base_module_of_its_package():
    elsewhere = [f"{rel}:{text[:m.start()].count(chr(10)) + 1}" for rel, text in sources()
                 for m in re.finditer(r"(?<!class )\bRegistry\(", text) if not rel.endswith("/base.py")]
    assert not elsewhere, elsewhere


def test_the_pipeline_asks_its_mode_and_never_compares_a_strategy_name():
    compared = re.compile(r"""[=!]=\s*["'](fresh|init|final|rewind|rescore|retrain)["']|["'](rescore|retrain)["']""")
    found = [f"{rel}: {m.group(0)}" for rel, text in sources() if rel.startswith("experiment/")
             for m in compared.finditer(text)]
    assert not found, found


def test_at_most_eight_modules_at_the_top_and_each_package_says_what_it_may_import():
    top = sorted(p.name for p in PACKAGE.glob("*.py"))
    assert len(top) <= 8, top
    for init in PACKAGE.glob("*/__init__.py"):
        doc = ast.get_docstring(ast.parse(init.read_text())) or ""
        assert "import" in doc, f"{init.relative_to(REPO)}: its docstring says what it holds and may import"


def test_every_design_reference_names_a_section_the_document_has():
    design = (REPO / "docs" / "design.md").read_text()
    sections = set(re.findall(r"^#+ (§[\d.]+)", design, re.M))
    cited = {(rel, m) for rel, text in sources() for m in re.findall(r"docs/design\.md (§[\d.]+)", text)}
    others = [*REPO.glob("conf/**/*.yaml"), *REPO.glob("sweeps/*.yaml"), REPO / "pyproject.toml", REPO / "README.md"]
    cited |= {(str(p.relative_to(REPO)), m) for p in others for m in re.findall(r"docs/design\.md (§[\d.]+)",
                                                                                  p.read_text())}
    assert cited and not {m for _, m in cited} - sections, sorted(c for c in cited if c[1] not in sections)
    assert not [rel for rel, text in sources() if "SPEC" in text]
    assert not [p for p in others if "SPEC" in p.read_text()]


def lint(package_root):
    env = {**os.environ, "PYTHONPATH": str(package_root)}
    linter = os.path.join(os.path.dirname(sys.executable), "lint-imports")  # import-linter's command, in the venv
    return subprocess.run([linter, "--config", str(REPO / "pyproject.toml"), "--no-cache"], cwd=package_root, env=env,
                          capture_output=True, text=True, timeout=300)


def test_the_linter_fails_on_an_upward_import(tmp_path):
    copy = tmp_path / "lottery"
    shutil.copytree(PACKAGE, copy, ignore=shutil.ignore_patterns("__pycache__"))
    clean = lint(tmp_path)
    assert clean.returncode == 0 and "0 broken" in clean.stdout, clean.stdout + clean.stderr
    networks = copy / "networks" / "surgery.py"
    networks.write_text(networks.read_text() + "\nfrom lottery.experiment import trial  # noqa: E402,F401\n")
    broken = lint(tmp_path)
    assert broken.returncode != 0 and "lottery.networks.surgery -> lottery.experiment.trial" in broken.stdout

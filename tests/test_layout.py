"""The package reads as its layout says: families stay inside ``lottery/models``, the input size
inside the data module, and no function grows a long chain of loose parameters."""

import ast
import re

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
    found = [f"{rel}: {m.group(0)}" for rel, text in sources(exclude=("models/", "config.py"))
             for m in internals.finditer(text)]
    assert not found, found


def test_the_input_size_is_a_literal_of_the_data_module_alone():
    found = [rel for rel, text in sources(exclude=("data.py",)) if re.search(r"\b32\s*,\s*32\b|3, 32\b", text)]
    assert not found, found

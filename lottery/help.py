"""``python -m lottery --help``: the config groups with their choices, every key with its default
and help, and examples, all read from the registries and the schema (nothing to keep in sync)."""

from __future__ import annotations

import dataclasses
import textwrap
from pathlib import Path

from lottery.config import choice, schema_fields

CONF = Path(__file__).resolve().parent.parent / "conf"
EXAMPLES = """\
  python -m lottery profile=smoke data=synthetic mode=init criterion=grasp density=2
  python -m lottery data=imagefolder data.root=DIR profile=quick criterion=snip density=1
  python -m lottery mode=rewind rewind_epoch=0.125 criterion=kl density=1
  python -m lottery -m profile=smoke data=synthetic criterion=snip,grasp density=1,2,3
  python -m lottery.sweeps table2 --profile quick --seeds 3 --dry-run   (what a paper table still needs)"""


def _yaml_doc(path: Path) -> str:
    """The first comment line of a config file, less Hydra's package directive."""
    lines = [ln[1:].strip() for ln in path.read_text().splitlines() if ln.startswith("#") and "@package" not in ln]
    return lines[0] if lines else ""


def _groups() -> list[tuple[str, list[tuple[str, str]]]]:
    from lottery.criteria import CRITERIA
    from lottery.modes import MODES

    registry = {"criterion": {n: c.doc for n, c in CRITERIA.items()}, "mode": {n: m.paper for n, m in MODES.items()}}
    out = []
    for folder in sorted(p for p in CONF.iterdir() if p.is_dir() and p.name != "hydra"):
        docs = registry.get(folder.name, {})
        out.append((folder.name, [(f.stem, docs.get(f.stem) or _yaml_doc(f)) for f in sorted(folder.glob("*.yaml"))]))
    return out


def text() -> str:
    default = {"model": "resnet32", "data": "cifar10", "criterion": "grasp", "mode": "init", "profile": "paper"}
    lines = ["usage: python -m lottery [GROUP=CHOICE ...] [KEY=VALUE ...]   (-m KEY=A,B ... for a sweep)", "",
             "One trial: get or train the dense network, score its blocks, build the shallower ticket, train,",
             "measure and log it to MLflow. Every key is typed; a mistake is one line before any work.", "",
             "config groups (* marks the default):"]
    groups = _groups()
    width = max(len(option) for _, choices in groups for option, _ in choices) + 1
    for name, choices in groups:
        lines.append(f"  {name}:")
        for option, doc in choices:
            mark = "*" if default.get(name) == option else " "
            lines.append(f"   {mark}{option:<{width}} {doc}")
    lines += ["", "keys (+ marks execution settings: they never change results, nor a trial's identity):"]
    for key, f in sorted(schema_fields(), key=lambda kv: (kv[0].count("."), kv[0])):
        default = "[...]" if f.default is dataclasses.MISSING else choice(f.default)
        mark = "+" if f.metadata["execution"] else " "
        lines += textwrap.wrap(f"{key} = {default}: {f.metadata['help']}", 100, initial_indent=f" {mark}",
                               subsequent_indent="      ")
    lines += ["", "examples:", EXAMPLES, "",
              "python -m lottery --cfg job [overrides] prints the composed config; --hydra-help is Hydra's help."]
    return "\n".join(lines)

"""``python -m lottery --help``: the commands, the config groups with their choices, every key with
its default and help (the kinds' own keys under their kind), and examples, all read from the
registries, the schema and ``conf/`` (nothing to keep in sync)."""

from __future__ import annotations

import dataclasses
import textwrap
from pathlib import Path

import yaml

from lottery.config import CONF, Registry, choice, kind_fields, schema_fields

EXAMPLES = """\
  python -m lottery profile=smoke data=synthetic mode=init criterion=grasp density=2
  python -m lottery data=imagefolder data.root=DIR profile=quick criterion=snip density=1
  python -m lottery mode=rewind rewind_epoch=0.125 criterion=kl density=1
  python -m lottery -m profile=smoke data=synthetic criterion=snip,grasp density=1,2,3
  python -m lottery sweep table2 --profile quick --seeds 3 --dry-run   (what a paper table still needs)"""


def _yaml_doc(path: Path) -> str:
    """The first comment line of a config file, less Hydra's package directive."""
    lines = [ln[1:].strip() for ln in path.read_text().splitlines() if ln.startswith("#") and "@package" not in ln]
    return lines[0] if lines else ""


def _defaults() -> dict[str, str]:
    """The option each group takes unless told (conf/config.yaml's defaults list)."""
    entries = yaml.safe_load((CONF / "config.yaml").read_text())["defaults"]
    return {k: v for e in entries if isinstance(e, dict) for k, v in e.items()}


def _groups() -> list[tuple[str, list[tuple[str, str]]]]:
    """Every config group's options, each with its kind's own one-line doc where it has one."""
    docs = {r.group: {n: item.doc for n, item in r.items() if hasattr(item, "doc")} for r in Registry.every if r.group}
    out = []
    for folder in sorted(p for p in CONF.iterdir() if p.is_dir() and p.name not in ("hydra", "sizing")):
        own = docs.get(folder.name, {})
        out.append((folder.name, [(f.stem, own.get(f.stem) or _yaml_doc(f)) for f in sorted(folder.glob("*.yaml"))]))
    return out


def _key(key: str, f: dataclasses.Field, of: str = "") -> list[str]:
    default = "[...]" if f.default is dataclasses.MISSING else choice(f.default)
    mark = "+" if f.metadata.get("execution") else " "
    return textwrap.wrap(f"{key}{of} = {default}: {f.metadata.get('help', '')}", 100, initial_indent=f" {mark}",
                         subsequent_indent="      ")


def text(commands: dict[str, str]) -> str:
    """The help page; ``commands``: the other commands of ``python -m lottery``, each with its line."""
    default = _defaults()
    lines = ["usage: python -m lottery [GROUP=CHOICE ...] [KEY=VALUE ...]   (-m KEY=A,B ... for a sweep)",
             "       python -m lottery COMMAND [...]   (python -m lottery COMMAND --help)", "",
             "One trial: get or train the dense network, score its blocks, build the shallower ticket, train,",
             "measure and log it to MLflow. Every key is typed; a mistake is one line before any work.", "",
             "commands:"]
    width = max(map(len, commands), default=0) + 1
    lines += [f"   {name:<{width}} {doc}" for name, doc in commands.items()]
    lines += ["", "config groups (* marks the default):"]
    groups = _groups()
    width = max(len(option) for _, choices in groups for option, _ in choices) + 1
    for name, choices in groups:
        lines.append(f"  {name}:")
        for option, doc in choices:
            mark = "*" if default.get(name) == option else " "
            lines.append(f"   {mark}{option:<{width}} {doc}")
    lines += ["", "keys (+ marks execution settings: they never change results, nor a trial's identity):"]
    for key, f in sorted(schema_fields(), key=lambda kv: (kv[0].count("."), kv[0])):
        lines += _key(key, f)
    lines += ["", "keys of one kind (model=..., data=..., criterion=... that have them):"]
    for key, kind, f in sorted(kind_fields(), key=lambda k: (k[0], k[1])):
        lines += _key(key, f, f" ({kind})")
    lines += ["", "examples:", EXAMPLES, "",
              "python -m lottery --cfg job [overrides] prints the composed config; --hydra-help is Hydra's help."]
    return "\n".join(lines)

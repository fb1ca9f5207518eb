"""Residual networks behind one contract, so that every criterion, structure, cost and table works
on every family. The face of the package: what the rest of lottery calls, re-exported from

- ``base``: the family contract (``Family``), the registry ``FAMILIES`` and the values it speaks in;
- one module per family (each registers itself), and ``surgery``: removal and narrowing by
  module path, shared by the module families;
- ``anatomy``: what is read from any network the same way (blocks, stages, removability,
  classifier, inputs); ``building``: networks made from configs, records and surgery;
  ``weights``: what per-weight criteria score; ``hooks``: forward hooks the criteria run through.

Nothing outside ``lottery/networks/`` names a family's modules or parameters. This package
imports only the schema (``lottery.config``, ``lottery.errors``, ``lottery.files``); families
import only ``base`` and ``surgery``, never one another.
"""

from lottery.config import import_kinds
from lottery.networks.anatomy import (Anatomy, Block, anatomy, classes, example, family_of, head, input_shape,
                                      narrowables, ones_input, record, removable_paths, targets)
from lottery.networks.base import FAMILIES, Family, Narrowable, Shape
from lottery.networks.building import (build, channels_last, check, family, label, like, narrowed, rebuild, skeleton,
                                       without)
from lottery.networks.hooks import batch_statistics, block_ends, block_outputs, features, skipping
from lottery.networks.weights import NORMS, PROJECTIONS, count_filters, count_params, scored_weights

__all__ = [
    "FAMILIES", "NORMS", "PROJECTIONS", "Anatomy", "Block", "Family", "Narrowable", "Shape", "anatomy",
    "batch_statistics", "block_ends", "block_outputs", "build", "channels_last", "check", "classes", "count_filters",
    "count_params", "example", "family", "family_of", "features", "head", "input_shape", "label", "like",
    "narrowables", "narrowed", "ones_input", "rebuild", "record", "removable_paths", "scored_weights", "skeleton",
    "skipping", "targets", "without",
]
import_kinds(__name__, __path__)  # each family's module registers it

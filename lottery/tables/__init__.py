"""Paper tables from MLflow runs: cells (matching, statistics), rendering, plots, command line."""

from lottery.tables.cells import Cell, build, budget, matching
from lottery.tables.cli import main
from lottery.tables.render import FORMATS, csv_text, latex, markdown

__all__ = ["Cell", "FORMATS", "budget", "build", "csv_text", "latex", "main", "markdown", "matching"]

"""The paper's artefacts built from MLflow: a table's cells (``cells``: exact matching, pairing
by seed, intervals, verdicts), rendered (``render``: md, csv, LaTeX, json) and plotted
(``plots``), the table command (``tables``), the claims judged from the cells (``claims``) and
the one-page report (``report``).

May import every layer below it: the experiment (sweep files and cell identities), tracking,
measurement (statistics, plotting) and the schema.
"""

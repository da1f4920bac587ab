"""``driftd report``: what rebalancing cost and earned, from the history the daemon stores.

One concept a module. Pure (no database, no chain, no process wiring; checked by import-linter):
:mod:`~daemon.report.history` (the records a report is computed from), :mod:`~daemon.report.series`
(drift over time, the buy-and-hold benchmark, samples for risk figures),
:mod:`~daemon.report.costs` (gas, DEX fees, price impact, slippage, success rate),
:mod:`~daemon.report.daily` (the seed's per-day drift trend), :mod:`~daemon.report.figures` (the
report: every figure with its name, unit and precision, so each format shows the same numbers),
and the renderings: :mod:`~daemon.report.text` (table, JSON), :mod:`~daemon.report.charts`
(matplotlib, SVG or PNG) and :mod:`~daemon.report.html` (one self-contained page). I/O:
:mod:`~daemon.report.load` reads the history from PostgreSQL.
"""

"""Tooling for the demo and the tests, kept apart from the production daemon.

Here live a local chain with the real contracts (:mod:`daemon.devtools.devnet`: anvil, Uniswap V2,
the Delegation Framework, driftd's guard), a market simulator that moves prices by real swaps
(:mod:`daemon.devtools.market`), a throwaway PostgreSQL started from the installed binaries
(:mod:`daemon.devtools.pgserver`) and the self-contained demo built from them
(:mod:`daemon.devtools.demo` with its setup, monitor, statistics and view).

The production daemon never imports this package: the one exception is ``driftd demo``
(:mod:`daemon.cli.demo`), which imports it lazily, inside the command, so that ``driftd run`` and
every other command load none of it.
"""

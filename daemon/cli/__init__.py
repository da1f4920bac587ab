"""The operator's command line, ``driftd`` (:mod:`daemon.cli.main`), one module per command group.

Nothing outside this package imports it (an import-linter contract): the daemon and its actors
know no CLI.
"""

"""Process exit codes, from BSD sysexits(3), so scripts and systemd can tell failures apart."""

from typing import Final

OK: Final = 0
USAGE: Final = 64
"""The command line was wrong."""
DATA_ERROR: Final = 65
"""Input data (a delegation file, a target list) was wrong."""
UNAVAILABLE: Final = 69
"""A service we need (database, RPC node, the daemon's socket) cannot be reached."""
TEMPORARY_FAILURE: Final = 75
"""Try again later (e.g. cooldown active)."""
CONFIG_ERROR: Final = 78
"""The configuration is invalid."""

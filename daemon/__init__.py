"""driftd: keeps crypto portfolios held in smart accounts at their target allocations."""

from importlib.metadata import PackageNotFoundError, version


def package_version() -> str:
    """The installed distribution's version (``0+unknown`` when run from a bare checkout)."""
    try:
        return version("driftd")
    except PackageNotFoundError:
        return "0+unknown"

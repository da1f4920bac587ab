"""The one error every configuration problem is reported as."""

from __future__ import annotations


class ConfigError(Exception):
    """The configuration is invalid. ``problems`` lists each as ``section.key: what is wrong``."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("invalid configuration:\n  " + "\n  ".join(problems))

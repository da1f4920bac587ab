"""Fault points for the reliability tests: make the real daemon crash where it matters.

``DRIFTD_TEST_FAULTS`` holds comma-separated rules ``point[@subject]=action`` where the action is
``kill`` (SIGKILL this process: nothing gets to clean up, like a power cut) or ``raise`` (an
exception at that point). Examples: ``after_intent=kill`` (the signed transaction is recorded but
not broadcast), ``after_broadcast=kill``, ``evaluate@crashy=raise`` (the portfolio named crashy
crashes on every evaluation). Without the variable every check is a no-op.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Mapping
from typing import Final

import attrs

FAULTS_ENV: Final = "DRIFTD_TEST_FAULTS"


class InjectedFault(RuntimeError):
    """Raised at a fault point configured with ``raise``."""


@attrs.frozen
class Faults:
    """The configured rules; call :meth:`check` at each fault point."""

    rules: Mapping[str, str] = attrs.Factory(dict)

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> Faults:
        rules: dict[str, str] = {}
        for item in env.get(FAULTS_ENV, "").split(","):
            if not item.strip():
                continue
            point, _, action = item.strip().partition("=")
            if action not in ("kill", "raise"):
                raise ValueError(f"{FAULTS_ENV}: action of {point!r} must be kill or raise")
            rules[point] = action
        return cls(rules)

    def check(self, point: str, subject: str | None = None) -> None:
        """Act if a rule names ``point`` (or ``point@subject``)."""
        action = self.rules.get(point) or (subject and self.rules.get(f"{point}@{subject}"))
        if action == "kill":
            os.kill(os.getpid(), signal.SIGKILL)
        elif action == "raise":
            raise InjectedFault(f"injected fault at {point}" + (f"@{subject}" if subject else ""))

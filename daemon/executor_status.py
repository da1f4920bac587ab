"""What health reports about the executor, kept current by the executor as it works."""

from __future__ import annotations

import attrs
import trio


@attrs.define(eq=False)
class ExecutorStatus:
    """What health reports about the executor."""

    signer: str
    next_nonce: int | None = None
    pending: int = 0
    """Requests being carried out now."""
    handled: int = 0
    last_loop_at: float | None = None
    """trio.current_time() of the executor's last sign of life (liveness)."""
    unsettled: int = 0
    """Nonces signed and not yet provably consumed."""
    blocked: str | None = None
    """Why no new transaction can be sent now (e.g. the signer has no gas money)."""
    stuck_for: float | None = None
    """Seconds the oldest unsettled nonce has been open, once past ``stuck_after``."""
    recovering: int = 0
    """Attempts of a previous run still being settled."""
    lease_held: bool = False
    """This process holds the signer's lease (False: a standby waiting for it, or stopping)."""
    idle: trio.Event = attrs.Factory(trio.Event)
    """Set while no request is in flight (a graceful stop waits on it)."""

    def __attrs_post_init__(self) -> None:
        self.idle.set()

    def begin(self) -> None:
        if self.pending == 0:
            self.idle = trio.Event()
        self.pending += 1

    def end(self) -> None:
        self.pending -= 1
        if self.pending == 0:
            self.idle.set()

    @property
    def degraded(self) -> str | None:
        """Why health should say the executor is not well, or None."""
        if self.blocked is not None:
            return f"signer blocked: {self.blocked}"
        if self.stuck_for is not None:
            return f"a transaction has been unsettled for {self.stuck_for:.0f} s"
        return None

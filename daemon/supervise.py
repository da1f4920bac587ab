"""Supervision: run one actor per key, restart it with backoff when it crashes, park it when it
keeps crashing — while every other actor keeps running.

Why the supervisor owns each actor's state: a restart must not reset what the actor knew (the
portfolio's cooldown clock, last drift, last decision), so the state object is created once per
key, kept here, and handed to every incarnation of the actor.

Restart policy: exponential backoff with jitter (``initial × 2^(n−1)``, capped, multiplied by a
random factor in [0.5, 1]) so that many actors failing together (a flaky RPC node) do not retry
in lock-step. More than ``max_restarts`` crashes within ``restart_window`` seconds parks the
actor: it is no longer restarted, is reported as parked, and :meth:`Supervisor.on_parked` is
called (a subclass alerts). An operator's ``resume`` unparks it.

Cancellation is never treated as a crash: ``trio.Cancelled`` is a BaseException and passes
through; only ``Exception`` counts.
"""

from __future__ import annotations

import random
from collections import deque
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Generic, Literal, NoReturn, TypeVar

import attrs
import trio

from daemon.backoff import Backoff
from daemon.logs import get_logger

if TYPE_CHECKING:
    from daemon.config import Config

S = TypeVar("S")
ActorFn = Callable[[S], Awaitable[None]]


SupervisedStatus = Literal["starting", "running", "backoff", "parked", "stopped"]
"""Where a supervised actor is in its life (health shows it)."""


@attrs.frozen
class RestartPolicy:
    """How crashed actors are restarted (``[supervisor]`` in the configuration)."""

    backoff_initial: float
    backoff_max: float
    max_restarts: int
    restart_window: float

    @classmethod
    def from_config(cls, config: Config) -> RestartPolicy:
        supervisor = config.supervisor
        return cls(
            backoff_initial=supervisor.backoff_initial,
            backoff_max=supervisor.backoff_max,
            max_restarts=supervisor.max_restarts,
            restart_window=supervisor.restart_window,
        )

    def delay(self, consecutive: int, rng: random.Random) -> float:
        """Seconds to wait before restart number ``consecutive`` (1-based)."""
        schedule = Backoff(initial=self.backoff_initial, maximum=self.backoff_max, jitter=0.5)
        return schedule.delay(consecutive - 1, rng)


@attrs.define(eq=False)
class Supervised(Generic[S]):
    """What the supervisor keeps per key across restarts."""

    key: str
    state: S
    """The actor's own state, handed to every incarnation."""
    actor: ActorFn[S]
    status: SupervisedStatus = "starting"
    """starting, running, backoff, parked or stopped."""
    restart_count: int = 0
    """Restarts since the actor was first started (for health)."""
    consecutive_failures: int = 0
    last_error: str | None = None
    crash_times: deque[float] = attrs.field(factory=deque)
    cancel_scope: trio.CancelScope | None = None
    wake: trio.Event = attrs.field(factory=trio.Event)
    """Set to cut a backoff sleep short (resume)."""


class Supervisor(Generic[S]):
    """Runs actors by key inside its own nursery; start it with ``nursery.start(sup.run)``."""

    def __init__(
        self,
        policy: RestartPolicy,
        *,
        rng: random.Random | None = None,
        name: str = "supervisor",
    ) -> None:
        self.policy = policy
        self._rng = rng or random.Random()  # noqa: S311 - jitter, not cryptography
        self._nursery: trio.Nursery | None = None
        self._actors: dict[str, Supervised[S]] = {}
        self._log = get_logger(actor=name)

    async def run(
        self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> NoReturn:
        """Own the nursery every actor runs in. Never returns; cancel to stop all actors."""
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            task_status.started()
            await trio.sleep_forever()
        raise AssertionError("unreachable")  # pragma: no cover

    @property
    def actors(self) -> dict[str, Supervised[S]]:
        """Every supervised actor by key (read-only use: health reports)."""
        return dict(self._actors)

    def start(self, key: str, actor: ActorFn[S], state: S) -> Supervised[S]:
        """Start the actor for ``key`` with ``state`` unless it already runs (then nothing
        changes: a running actor keeps the state it has)."""
        if self._nursery is None:
            raise RuntimeError("Supervisor.run has not started")
        existing = self._actors.get(key)
        if existing is not None and existing.status != "stopped":
            return existing
        entry = Supervised(key=key, state=state, actor=actor)
        self._actors[key] = entry
        self._nursery.start_soon(self._keep_running, entry, name=f"actor:{key}")
        return entry

    def stop(self, key: str) -> None:
        """Stop the actor for ``key`` (portfolio deactivated); its state is forgotten."""
        entry = self._actors.pop(key, None)
        if entry is None:
            return
        entry.status = "stopped"
        if entry.cancel_scope is not None:
            entry.cancel_scope.cancel()
        entry.wake.set()

    def restart(self, key: str, actor: ActorFn[S]) -> None:
        """Restart ``key`` with a new actor function (portfolio changed), keeping its state."""
        entry = self._actors.get(key)
        if entry is None:
            raise KeyError(key)
        self.stop(key)
        self.start(key, actor, entry.state)

    def resume(self, key: str) -> bool:
        """Unpark a parked actor (or cut its backoff short). False if there is no such actor."""
        entry = self._actors.get(key)
        if entry is None:
            return False
        if entry.status == "parked":
            if self._nursery is None:
                raise RuntimeError("Supervisor.run has not started")
            entry.crash_times.clear()
            entry.consecutive_failures = 0
            entry.status = "starting"
            log = self._log.bind(key=key)
            log.info("actor_unparked")
            self._nursery.start_soon(self._keep_running, entry, name=f"actor:{key}")
        else:
            entry.wake.set()
        return True

    async def _keep_running(self, entry: Supervised[S]) -> None:
        log = self._log.bind(key=entry.key)
        while entry.status != "stopped":
            with trio.CancelScope() as scope:
                entry.cancel_scope = scope
                entry.status = "running"
                try:
                    await entry.actor(entry.state)
                except Exception as exc:  # any crash of one actor is contained here
                    entry.last_error = f"{type(exc).__name__}: {exc}"
                    log.error("actor_crashed", error=entry.last_error, exc_info=exc)
                else:
                    log.info("actor_finished")
                    entry.status = "stopped"
                    self._actors.pop(entry.key, None)
                    return
            if scope.cancelled_caught or entry.status == "stopped":
                return
            now = trio.current_time()
            entry.crash_times.append(now)
            while entry.crash_times and entry.crash_times[0] < now - self.policy.restart_window:
                entry.crash_times.popleft()
            if len(entry.crash_times) > self.policy.max_restarts:
                entry.status = "parked"
                log.error(
                    "actor_parked",
                    crashes=len(entry.crash_times),
                    window_seconds=self.policy.restart_window,
                    error=entry.last_error,
                )
                self.on_parked(entry.key, entry.last_error or "")
                return
            entry.consecutive_failures += 1
            delay = self.policy.delay(entry.consecutive_failures, self._rng)
            entry.status = "backoff"
            entry.wake = trio.Event()
            log.info("actor_restart_scheduled", delay_seconds=round(delay, 3))
            with trio.move_on_after(delay):
                await entry.wake.wait()
            if _stopped(entry):  # stop() may have run while we waited
                return
            entry.restart_count += 1

    def on_parked(self, key: str, error: str) -> None:
        """Called when the actor for ``key`` is parked (a subclass alerts); nothing here."""

    def mark_healthy(self, key: str) -> None:
        """An actor calls this after a successful cycle so the next crash backs off from scratch."""
        entry = self._actors.get(key)
        if entry is not None:
            entry.consecutive_failures = 0


def _stopped(entry: Supervised[Any]) -> bool:
    """Read afresh (a plain comparison right after an assignment would be narrowed away)."""
    return entry.status == "stopped"

"""Finished attempts on their way to the database.

Handler threads :meth:`~Outcomes.add` what their attempts came to; the
worker's main thread :meth:`~Outcomes.take` s them in batches and records
them with its next claim.  When the database refuses a batch, the outcomes
are kept (:meth:`~Outcomes.refused`); if it refused them for their data, or
keeps refusing them, they are recorded one by one
(:meth:`~Outcomes.record_singly`), and one still refused is replaced by a
failure that can be stored and says why.  So no value holds back another
task, and no task keeps its lease forever.
"""

from __future__ import annotations

import collections
import logging
from collections.abc import Callable

from .exceptions import DatabaseError, DatabaseUnavailable
from .queue import TaskStore
from .runner import REFUSED, unstorable
from .values import Outcome

log = logging.getLogger("flask_pgtq.worker")

#: Tries of a batch of outcomes refused by transient errors (timeouts,
#: cancels, deadlocks) before they are recorded one by one; and tries of one
#: outcome before it is replaced by a failure that can be stored.
OUTCOME_TRIES = 3
#: Rounds in which one outcome, recorded on its own, met a transient error
#: before it is replaced by a failure (it keeps timing out, say).
SINGLE_TRIES = 10


class Outcomes:
    """The finished attempts of one worker that are not recorded yet.

    :param store: the queue core.
    :param owner: the worker's id (the lease owner).
    """

    def __init__(self, store: TaskStore, owner: str) -> None:
        self.store = store
        self.owner = owner
        self._waiting: collections.deque[Outcome] = collections.deque()
        #: Tasks whose outcome was recorded another way (a stuck handler the
        #: worker gave up on): what their threads report later is dropped.
        self.abandoned: set[int] = set()
        #: Batches refused in a row; past OUTCOME_TRIES (or at once for an
        #: error about the data) outcomes are recorded one by one.
        self._failures = 0
        #: Transient refusals of outcomes recorded on their own, by task id.
        self._tries: dict[int, int] = {}

    def __len__(self) -> int:
        return len(self._waiting)

    def add(self, outcome: Outcome) -> None:
        """A handler thread finished an attempt (thread-safe)."""
        self._waiting.append(outcome)

    def take(self) -> list[Outcome]:
        """Every outcome waiting, in order, the abandoned ones dropped."""
        batch = []
        while self._waiting:
            outcome = self._waiting.popleft()
            if outcome.task.id not in self.abandoned:
                batch.append(outcome)
        return batch

    def recorded(self) -> None:
        """A batch taken with :meth:`take` was recorded."""
        self._failures = 0

    def refused(self, outcomes: list[Outcome], exc: BaseException) -> None:
        """A statement carrying *outcomes* failed with *exc*: keep them for
        the next try; one by one if the error was about the data or keeps
        coming.  (A database that is down changes nothing: they wait.)"""
        self._waiting.extendleft(reversed(outcomes))
        if not outcomes or isinstance(exc, DatabaseUnavailable):
            return
        self._failures += 1
        if not isinstance(exc, DatabaseError) or not exc.transient:
            self._failures = max(self._failures, OUTCOME_TRIES)

    def record_singly(self, on_recorded: Callable[[list[Outcome], set[int]], None]) -> None:
        """If batches were refused, record the waiting outcomes one statement
        each, so that one the database refuses holds back no other.

        An outcome refused for its data is replaced at once by a failure that
        says why.  One refused by a transient error (a timeout, a cancel) is
        kept for a later round, after the loop's backoff; only after
        :data:`SINGLE_TRIES` such rounds (an outcome that always times out)
        is it replaced too, so a passing storm of cancels never turns a good
        outcome into a failure.  *on_recorded* gets each outcome recorded and
        the ids the database accepted.

        :raises DatabaseError: the database is unavailable, or an outcome
            was kept for later (what is left waits for the next round).
        """
        if self._failures < OUTCOME_TRIES:
            return
        outcomes = self.take()
        kept: list[Outcome] = []
        problem: DatabaseError | None = None
        for i, outcome in enumerate(outcomes):
            try:
                recorded = self._finish_one(outcome)
            except DatabaseUnavailable:
                self._waiting.extendleft(reversed(kept + outcomes[i:]))
                raise
            if isinstance(recorded, DatabaseError):
                kept.append(outcome)
                problem = recorded
                continue
            self._tries.pop(outcome.task.id, None)
            on_recorded([recorded[0]], recorded[1])
        if kept:
            self._waiting.extendleft(reversed(kept))
            assert problem is not None
            raise problem
        self._failures = 0

    def _finish_one(self, outcome: Outcome) -> tuple[Outcome, set[int]] | DatabaseError:
        """Record *outcome* (or the failure that replaces it); a transient
        error it has not met :data:`SINGLE_TRIES` times is returned instead,
        for a later round."""
        while True:
            try:
                return outcome, self.store.finish(self.owner, [outcome])
            except DatabaseError as exc:
                if isinstance(exc, DatabaseUnavailable):
                    raise
                if exc.transient and outcome.exception is not REFUSED:
                    tries = self._tries[outcome.task.id] = self._tries.get(outcome.task.id, 0) + 1
                    if tries < SINGLE_TRIES:
                        return exc
                elif outcome.exception is REFUSED:
                    return exc
                log.error(
                    "worker %s: the outcome of task %s (%s) could not be recorded (%s); "
                    "recording the attempt as failed instead",
                    self.owner,
                    outcome.task.id,
                    outcome.task.name,
                    exc,
                )
                outcome = unstorable(outcome, exc)

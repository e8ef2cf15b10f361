"""A tracking server that stops answering mid-command is waited for, with backoff, up to
`tracking.outage_grace_seconds`; past that the caller falls back to the spool (TrackingOutageError)."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TypeVar

from mnistexp import interrupts
from mnistexp.tracking.masking import mask

log = logging.getLogger("mnistexp")

Result = TypeVar("Result")
FIRST_WAIT, LONGEST_WAIT = 0.5, 15.0  # seconds between attempts: doubling from the first to the longest


class TrackingOutageError(Exception):
    """The tracking server did not answer within the grace period."""


def unreachable(error: BaseException | None) -> bool:
    """Whether an error means the server did not answer (refused, timed out, cut off mid-answer,
    502-504 behind a proxy), as opposed to an answer that refused the request (a 4xx, a bad value)."""
    import requests

    lost = (requests.exceptions.ConnectionError, requests.exceptions.Timeout, requests.exceptions.ChunkedEncodingError)
    seen: set[int] = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, lost):
            return True
        if isinstance(error, requests.exceptions.RetryError):  # 5xx or 429 until MLflow's own retries ran out
            return True
        if isinstance(error, requests.exceptions.HTTPError):  # artifact uploads raise these
            return error.response is not None and error.response.status_code in (502, 503, 504)
        message = str(error)
        if "failed with exception" in message and "Max retries exceeded" in message:
            return True  # MLflow's REST client keeps only the text of the requests error
        if "failed with timeout exception" in message:
            return True
        if "failed with exception" in message and "Connection broken:" in message:
            return True  # urllib3's words for an answer cut off after its headers: a server that died mid-reply
        error = error.__cause__ or error.__context__
    return False


class Rider:
    """Calls into one tracking server, riding out the times it does not answer.

    The first failed call prints one line and waits; each retry waits twice as long (up to
    LONGEST_WAIT), and the first call that gets through prints one more line. Once the grace has
    run out, every later call tries once and gives up at once, until one gets through again: a
    sweep's later jobs go to the spool without waiting all over again.
    """

    def __init__(
        self,
        uri: str,
        grace: float,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.uri, self.grace = mask(uri), grace
        self._clock, self._sleep = clock, sleep
        self.down_since: float | None = None
        self.given_up = False

    def call(self, action: Callable[[], Result], *, patient: bool = True) -> Result:
        """action() once the server answers; TrackingOutageError past the grace (or at once when not
        `patient`, as when a run is being ended after Ctrl-C). Other errors are raised as they are."""
        wait = FIRST_WAIT
        while True:
            try:
                result = action()
            except Exception as error:
                if not unreachable(error):
                    raise
                now = self._clock()
                if self.down_since is None:
                    self.down_since = now
                    if patient and not self.given_up:
                        log.warning(
                            "the tracking server %s does not answer: waiting up to %d s for it "
                            "(tracking.outage_grace_seconds); nothing logged meanwhile is lost",
                            self.uri,
                            self.grace,
                        )
                left = self.grace - (now - self.down_since)
                if self.given_up or not patient or left <= 0:
                    if not self.given_up:
                        log.warning(
                            "the tracking server %s did not answer for %.0f s: runs go to the spool until it does",
                            self.uri,
                            now - self.down_since,
                        )
                    self.given_up = True
                    raise TrackingOutageError(
                        f"the tracking server {self.uri} did not answer for {now - self.down_since:.0f} s"
                    ) from error
                interrupts.check()  # Ctrl-C while waiting stops the job now, not when the server is back
                if interrupts.pending() is not None:  # ... or, where a run is being opened or ended, the wait
                    patient = False
                    continue
                self._sleep(min(wait, left))
                wait = min(2 * wait, LONGEST_WAIT)
                continue
            self._answered()
            return result

    def _answered(self) -> None:
        if self.down_since is not None and not self.given_up:
            log.warning(
                "the tracking server %s answers again after %.0f s; what was logged meanwhile is delivered",
                self.uri,
                self._clock() - self.down_since,
            )
        self.down_since, self.given_up = None, False


_riders: dict[str, Rider] = {}


def shared_rider(uri: str, grace: float) -> Rider:
    """The process's rider for one server: the jobs of a sweep share what it knows."""
    found = _riders.get(uri)
    if found is None or found.grace != grace:
        found = _riders[uri] = Rider(uri, grace)
    return found


class RidingClient:
    """An MlflowClient whose every call rides out an outage of its server (see Rider)."""

    def __init__(self, client: object, rider: Rider) -> None:
        self._client, self._rider = client, rider

    def __getattr__(self, name: str) -> object:
        attribute = getattr(self._client, name)
        if not callable(attribute):
            return attribute

        def ridden(*args: object, **kwargs: object) -> object:
            return self._rider.call(lambda: attribute(*args, **kwargs))

        return ridden

"""State-change alerts: each event POSTed as JSON to every webhook, signed the way GitHub
signs its webhooks (`X-Hub-Signature-256: sha256=HEX`, HMAC-SHA256 of the body under the
shared secret), from an outbox in the database, so a receiver that is down, or a service
that restarts, loses nothing: the event is tried again with backoff until it is taken."""

from __future__ import annotations

import hashlib
import hmac
import logging
import logging.handlers
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from hardhost.verifier.service.store import Delivery, Store

log = logging.getLogger(__name__)

SIGNATURE_HEADER = "X-Hub-Signature-256"
# Backoff between tries of one delivery: 2, 4, 8, ... seconds, at most 10 minutes.
FIRST_BACKOFF = 2.0
MAX_BACKOFF = 600.0
# The outbox is looked at this often when nothing is due.
POLL_SECONDS = 1.0
_RESPONSE_LIMIT = 4096


def signature(body: bytes, secret: bytes) -> str:
    """The value of the signature header for `body`."""
    return "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest()


def backoff(attempts: int) -> float:
    """Seconds to wait after the `attempts`-th failed try."""
    # The exponent is capped first: 2.0 ** 1024 overflows, and max_attempts allows 1000.
    return min(MAX_BACKOFF, FIRST_BACKOFF * 2.0 ** min(max(0, attempts - 1), 32))


@dataclass(frozen=True)
class Target:
    url: str
    secret: bytes
    timeout: float


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    # A redirect would send the signed event wherever the receiver points; refuse it.
    def redirect_request(self, *args: object, **kwargs: object) -> None:
        return None


_OPENER = urllib.request.build_opener(_NoRedirects())


def post(target: Target, body: bytes) -> None:
    """POST one event; returns when the receiver answered 2xx, raises `OSError` otherwise."""
    request = urllib.request.Request(
        target.url, data=body, method="POST",
        headers={"Content-Type": "application/json", "User-Agent": "hardhost-serve",
                 SIGNATURE_HEADER: signature(body, target.secret)})
    try:
        with _OPENER.open(request, timeout=target.timeout) as response:
            response.read(_RESPONSE_LIMIT)
    except urllib.error.HTTPError as exc:
        raise OSError(f"HTTP {exc.code}") from None


class Notifier:
    """Delivers the outbox in a thread of its own until `stop` is set."""

    def __init__(self, store: Store, targets: Mapping[str, Target], max_attempts: int, *,
                 failed: Callable[[], None] = lambda: None) -> None:
        self.store, self.targets, self.max_attempts = store, dict(targets), max_attempts
        self.failed = failed
        self.wake = threading.Event()

    def run(self, stop: threading.Event) -> None:
        while not stop.is_set():
            sent = self.deliver_due()
            if not sent:
                self.wake.wait(POLL_SECONDS)
                self.wake.clear()

    def deliver_due(self) -> int:
        """Try each delivery that is due once; return how many were tried."""
        due = self.store.due(time.time())
        for delivery in due:
            self._one(delivery)
        return len(due)

    def _one(self, delivery: Delivery) -> None:
        target = self.targets.get(delivery.target)
        if target is None:  # a webhook since removed from the config
            self.store.retry(delivery, 0, "no longer configured", give_up=True)
            return
        try:
            post(target, delivery.body)
        except (OSError, ValueError) as exc:
            self.failed()
            attempts = delivery.attempts + 1
            give_up = attempts >= self.max_attempts
            log.warning("%s: event %d not delivered (try %d%s): %s", target.url,
                        delivery.event_id, attempts, ", dropped" if give_up else "", exc)
            self.store.retry(delivery, time.time() + backoff(attempts), str(exc),
                             give_up=give_up)
            return
        self.store.delivered(delivery)


def syslog_handler(address: str = "/dev/log") -> logging.Handler:
    """A handler that sends the service's state changes to syslog (the journal reads
    /dev/log under systemd)."""
    handler = logging.handlers.SysLogHandler(address=address)
    handler.ident = "hardhost-serve: "
    handler.setFormatter(logging.Formatter("%(message)s"))
    return handler

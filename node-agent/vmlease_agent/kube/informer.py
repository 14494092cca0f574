"""A list+watch cache of one kind of object, in a thread of its own (client-go's informer, small).

Why not poll: an agent on every node asking for every Lockspace every second would cost the API
server one request per node per second; a watch costs one long request per node and an event
per change. Why a cache: decisions read it without an API round trip, and it keeps the last
known state while the API server is away, so the agent's view degrades to "stale", never to
"empty" (an empty view would look like "every Lockspace was deleted").

The loop: list (the cache becomes exactly the list), then watch from the list's
resourceVersion; a watch that ends is reopened from the last resourceVersion seen (events and
bookmarks advance it); 410 Gone lists again; any other failure waits with exponential backoff
and jitter, then lists again.
"""

from __future__ import annotations

import logging
import random
import threading
from collections.abc import Callable
from typing import Any

from vmlease_agent.kube.api import Expired, KubeApi, NotFound, Refused

log = logging.getLogger(__name__)


class Backoff:
    """Exponential delays with full jitter, capped: 1, 2, 4 ... ``cap`` seconds."""

    def __init__(self, first: float = 1.0, cap: float = 30.0, rng: random.Random | None = None):
        self.first, self.cap = first, cap
        self.failures = 0
        self._rng = rng or random.Random()

    def next(self) -> float:
        delay = min(self.cap, self.first * 2**self.failures)
        self.failures += 1
        # at least half the delay: full jitter spreads a thousand agents reconnecting at once,
        # the floor keeps one agent from hammering a server that just came back
        return delay / 2 + self._rng.random() * delay / 2

    def reset(self) -> None:
        self.failures = 0


class Informer:
    """Objects of ``kind`` matching the selectors, by name; ``on_change()`` after each change."""

    def __init__(
        self,
        api: KubeApi,
        kind: str,
        label_selector: str | None = None,
        field_selector: str | None = None,
        on_change: Callable[[], None] = lambda: None,
        backoff: Backoff | None = None,
    ) -> None:
        self.api = api
        self.kind = kind
        self.label_selector = label_selector
        self.field_selector = field_selector
        self.on_change = on_change
        self.backoff = backoff or Backoff()
        self.synced = threading.Event()
        self.error = ""
        self._objects: dict[str, dict[str, Any]] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def objects(self) -> list[dict[str, Any]]:
        with self._lock:
            return list(self._objects.values())

    def get(self, name: str) -> dict[str, Any] | None:
        with self._lock:
            return self._objects.get(name)

    def start(self) -> None:
        self._thread = threading.Thread(target=self.run, name=f"watch:{self.kind}", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Ask the thread to end; it does after the current watch returns (daemon thread)."""
        self._stop.set()

    def run(self) -> None:
        while not self._stop.is_set():
            try:
                self.sync_once()
            except Expired:
                continue
            except Exception as error:  # never let the thread die: the agent runs for months
                self.error = f"{type(error).__name__}: {error}"
                if isinstance(error, NotFound):
                    error = NotFound(
                        f"{error}; the {self.kind} resource is not served: install the vmlease "
                        f"CRDs (kubectl apply -f crds/, or the chart)"
                    )
                delay = self.backoff.next()
                level = logging.ERROR if isinstance(error, Refused) else logging.WARNING
                log.log(
                    level, "watch of %s failed (%s); retrying in %.1fs", self.kind, error, delay
                )
                self._stop.wait(delay)

    def relist(self) -> str:
        """Replace the cache with a fresh list; returns the list's resourceVersion."""
        items, rv = self.api.list(self.kind, self.label_selector, self.field_selector)
        with self._lock:
            self._objects = {o["metadata"]["name"]: o for o in items}
        self.synced.set()
        self.error = ""
        self._notify()
        return rv

    def sync_once(self) -> None:
        """One list, then watches until one fails (raises) or stop is asked."""
        rv = self.relist()
        self.backoff.reset()
        while not self._stop.is_set():
            for type_, obj in self.api.watch(
                self.kind, rv, self.label_selector, self.field_selector
            ):
                if self._stop.is_set():
                    return
                rv = obj.get("metadata", {}).get("resourceVersion") or rv
                if type_ == "BOOKMARK":
                    continue
                self.apply(type_, obj)

    def apply(self, type_: str, obj: dict[str, Any]) -> None:
        name = obj["metadata"]["name"]
        with self._lock:
            if type_ == "DELETED":
                self._objects.pop(name, None)
            else:
                self._objects[name] = obj
        self._notify()

    def _notify(self) -> None:
        try:
            self.on_change()
        except Exception:
            log.exception("informer %s: change callback failed", self.kind)

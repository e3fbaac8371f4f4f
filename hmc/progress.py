"""Progress of a run: a tqdm bar on a terminal, a log line every ten seconds elsewhere."""

from __future__ import annotations

import logging
import sys
import time

from tqdm.auto import tqdm

logger = logging.getLogger("hmc")


class Progress:
    def __init__(self, name: str, total: int, done: int, enabled: bool):
        self.name, self.total = name, total
        self.bar = tqdm(total=total, desc=f"hmc {name}", unit="it", disable=None if enabled else True,
                        mininterval=1.0, file=sys.stderr)
        self.log = enabled and self.bar.disable  # no terminal: log lines instead
        self.started = self.last = time.perf_counter()
        self.done_before = done

    def update(self, done: int, phase: str, trips: int) -> None:
        self.bar.update(done - self.bar.n)
        now = time.perf_counter()
        if self.log and (now - self.last > 10.0 or done == self.total):
            self.last = now
            logger.info("%s: %d/%d iterations (%s), %.1f it/s, %d guard trips", self.name, done, self.total,
                        phase, done / max(now - self.started, 1e-9), trips)

    def close(self) -> None:
        self.bar.close()

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

"""Keeps the embedded tritonserver serving, in a thread of its own.

- tritonserver exited (killed, crashed): clean up after it (its process group, python stubs included,
  and its shared memory), then start a new one on the same ports, with a growing delay when starts
  fail or the server keeps dying. The front and the robots' websockets stay up meanwhile.
- a model's python stub died (seen in the process table, or reported by a failed call): reload that
  model, which starts a fresh stub in 1.5-2 s while every other model keeps serving; only when the
  reload fails is tritonserver restarted.

Everything it sees and does goes to `Health`, which the front reads.
"""

from __future__ import annotations

import logging
import signal
import threading
import time

from openpi_triton.config import TRITON_RESTART_DELAY_S, TRITON_RESTART_MAX_DELAY_S
from openpi_triton.process import is_alive, url_answers
from openpi_triton.triton.embedded import EmbeddedTriton, EmbeddedTritonError
from openpi_triton.triton.health import Health

log = logging.getLogger("openpi_triton.supervisor")

POLL_S = 0.25
# A server that ran this long before it died is restarted at once, and the backoff starts over.
STABLE_AFTER_S = 60.0


def describe_exit(code: int | None) -> str:
    if code is None:
        return "exited"
    if code < 0:
        try:
            return f"was killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"was killed by signal {-code}"
    return f"exited with code {code}"


class TritonSupervisor:
    def __init__(self, triton: EmbeddedTriton, health: Health, restart_delay_s: float = TRITON_RESTART_DELAY_S,
                 restart_max_delay_s: float = TRITON_RESTART_MAX_DELAY_S) -> None:
        self.triton, self.health = triton, health
        self.restart_delay_s, self.restart_max_delay_s = restart_delay_s, restart_max_delay_s
        self._delay = restart_delay_s
        self._started_at = 0.0
        self._stubs: dict[int, str] = {}
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> TritonSupervisor:
        """The first start runs in the caller's thread and raises: a taken port or a broken repository
        stops `serve` with its reason instead of a restart loop."""
        self.triton.start()
        self._serving(restarted=False)
        self._thread = threading.Thread(target=self._run, name="triton-supervisor", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """No more restarts, then stop tritonserver and clean up after it."""
        self._stopping.set()
        self.health.wake.set()
        if self._thread is not None:
            self._thread.join(30)  # its waits are cancellable; an HTTP call to Triton can take a while
        self.triton.stop()

    def __enter__(self) -> TritonSupervisor:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _run(self) -> None:
        while not self._stopping.is_set():
            self.health.wake.wait(POLL_S)
            self.health.wake.clear()
            if self._stopping.is_set():
                return
            try:
                if self.triton.exited():
                    self._restart(f"tritonserver (pid {self.triton.pid}) {describe_exit(self._reap())}")
                else:
                    self._heal_models()
            except Exception:  # the supervisor must outlive whatever went wrong this round
                log.exception("supervisor round failed")

    def _reap(self) -> int | None:
        child = self.triton.child
        self.triton.stop()  # kills what is left of its group, reaps it, removes its shared memory
        return None if child is None else child.process.returncode

    def _restart(self, reason: str) -> None:
        log.error("restarting tritonserver", extra={"reason": reason})
        self.health.server_down(reason, "restarting it")
        self.triton.stop()
        uptime = time.monotonic() - self._started_at
        if uptime >= STABLE_AFTER_S:
            self._delay = self.restart_delay_s
        elif not self._wait_backoff(reason, f"it had run only {uptime:.0f} s"):
            return
        attempt = 1
        while True:
            try:
                self.triton.start(cancelled=self._stopping.is_set)
                break
            except EmbeddedTritonError as error:
                if self._stopping.is_set():
                    return
                first_line = str(error).splitlines()[0]
                log.error("tritonserver restart failed", extra={"attempt": attempt, "error": str(error)})
                if not self._wait_backoff(reason, f"restart attempt {attempt} failed: {first_line}"):
                    return
                attempt += 1
        log.warning("tritonserver restarted", extra={"pid": self.triton.pid, "attempts": attempt})
        self._serving(restarted=True)

    def _wait_backoff(self, reason: str, why: str) -> bool:
        """Wait the current delay, then double it; False when stopping."""
        self.health.server_down(f"{reason}; {why}", f"restarting it in {self._delay:.3g} s")
        if self._stopping.wait(self._delay):
            return False
        self._delay = min(self._delay * 2, self.restart_max_delay_s)
        self.health.server_down(reason, "restarting it")
        return True

    def _serving(self, restarted: bool) -> None:
        self._started_at = time.monotonic()
        self._stubs = self.triton.python_stubs()
        self.health.server_up(restarted)

    def _heal_models(self) -> None:
        down = self.health.take_heal_requests()
        for pid, model in self._stubs.items():
            # An operator may have unloaded the model on purpose (its stub then exits): only a model that
            # Triton still calls ready has lost its stub.
            ready_url = f"{self.triton.http_url}/v2/models/{model}/ready"
            if not is_alive(pid) and model not in down and url_answers(ready_url):
                down[model] = f"its python stub (pid {pid}) died"
        if not down:
            return
        for model, reason in down.items():
            if self._stopping.is_set() or self.triton.exited():
                return
            self._reload(model, reason)
        self._stubs = self.triton.python_stubs()

    def _reload(self, model: str, reason: str) -> None:
        log.error("reloading model", extra={"model": model, "reason": reason})
        self.health.model_down(model, reason, f"reloading model {model!r}")
        started = time.monotonic()
        try:
            self.triton.reload_model(model)
        except EmbeddedTritonError as error:
            self._restart(f"model {model!r} is down ({reason}) and reloading it failed: {error}")
            return
        log.warning("model reloaded", extra={"model": model, "seconds": round(time.monotonic() - started, 3)})
        self.health.model_up(model, reloaded=True)

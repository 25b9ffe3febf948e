"""Dispatch of one GR00T request: decode it, check the token, answer its endpoint (`get_action` through the
backend, in chunks of the policy's batch size) and account for it (metrics, drain). Every request gets
exactly one reply, an error as `{"error": text}`."""

from __future__ import annotations

import asyncio
import logging
import signal
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from openpi_triton.config import Settings
from openpi_triton.front.auth import key_matches
from openpi_triton.front.codec import ProtocolError, Refused
from openpi_triton.front.drain import Drain
from openpi_triton.front.gr00t.codec import decode_request, decode_value, encode_reply, modality_config_reply
from openpi_triton.front.gr00t.requests import action_reply, parse_get_action
from openpi_triton.front.metrics import FrontMetrics
from openpi_triton.front.observations import nonfinite_answer, observation_to_tensors, rows_response
from openpi_triton.triton.backend import Backend, BackendRejected, BackendUnavailable
from openpi_triton.triton.policy import Policy

log = logging.getLogger("openpi_triton.front")

PROTOCOL = "gr00t"  # the metrics label of this endpoint's requests
ENDPOINTS = ("ping", "kill", "get_action", "get_modality_config", "reset")


def default_kill() -> None:
    """What an allowed `kill` does: the same as SIGTERM (drain, then stop the server and its tritonserver)."""
    signal.raise_signal(signal.SIGTERM)


@dataclass
class Call:
    endpoint: str = "unknown"  # a metrics label: only known endpoint names


class Dispatcher:
    def __init__(self, settings: Settings, backend: Backend, metrics: FrontMetrics, drain: Drain,
                 on_kill: Callable[[], None] = default_kill) -> None:
        self.settings, self.backend, self.metrics, self.drain = settings, backend, metrics, drain
        self.on_kill = on_kill

    async def handle(self, body: memoryview, request_id: str, send: Callable[[bytes], Awaitable[None]]) -> None:
        """Answer one request with `send(reply)`, whatever goes wrong on it."""
        started = time.monotonic()
        call, outcome = Call(), "ok"
        self.drain.opened()
        self.metrics.in_flight.inc()
        try:
            try:
                reply = await self.answer(body, call, request_id)
            except Refused as refused:
                reply, outcome = {"error": refused.text}, refused.outcome
            except Exception as error:  # whatever goes wrong on one request must not stop the socket
                log.exception("unexpected error on a GR00T request", extra={"request_id": request_id})
                reply, outcome = {"error": f"internal server error on this request ({type(error).__name__}); the "
                                           "server keeps serving"}, "internal_error"
            try:
                payload = encode_reply(reply)
            except (TypeError, ValueError, OverflowError) as error:
                payload, outcome = encode_reply({"error": f"the reply could not be encoded: {error}"}), "internal_error"
            await send(payload)
        finally:
            self.metrics.in_flight.dec()
            self.drain.closed()
        policy = self.settings.gr00t_policy
        self.metrics.requests.labels(policy, call.endpoint, outcome, PROTOCOL).inc()
        if outcome != "ok":
            log.warning("GR00T request failed", extra={"request_id": request_id, "endpoint": call.endpoint,
                                                      "outcome": outcome, "error": reply["error"]})
        elif call.endpoint == "get_action":
            self.metrics.latency.labels(policy, PROTOCOL).observe(time.monotonic() - started)
        elif call.endpoint == "kill":
            log.warning("GR00T client asked the server to stop (kill); shutting down", extra={"request_id": request_id})
            asyncio.get_running_loop().call_soon(self.on_kill)

    async def answer(self, body: memoryview, call: Call, request_id: str) -> Any:
        """The reply to one request; raises Refused with the error text the client gets instead."""
        if self.drain.draining:
            raise Refused("server shutting down; connect to another replica or retry", "draining")
        try:
            message = decode_request(body)
        except ProtocolError as error:
            raise Refused(str(error), "bad_request") from None
        if self.settings.auth_enabled and not key_matches(message.get("api_token"), self.settings.api_keys):
            raise Refused("Unauthorized: Invalid API token", "unauthorized")
        endpoint = message.get("endpoint", "get_action")
        if endpoint not in ENDPOINTS:
            shown = repr(endpoint[:40]) if isinstance(endpoint, str) else type(endpoint).__name__
            raise Refused(f"Unknown endpoint: {shown} (this server answers {', '.join(ENDPOINTS)})", "unknown_endpoint")
        call.endpoint = endpoint
        data = message.get("data")
        if endpoint == "ping":
            return {"status": "ok", "message": "Server is running"}
        if endpoint == "kill":
            if not self.settings.gr00t_allow_kill:
                raise Refused("kill is refused: this server was started without --gr00t-allow-kill (it also serves "
                              "other robots); stop it with SIGTERM or Ctrl-C", "kill_refused")
            return None
        if endpoint == "reset":
            if not isinstance(data, (dict, type(None))) or set(data or {}) - {"options"}:
                raise Refused("reset takes {'options': map or nil}", "bad_request")
            return {}
        policy = await self.policy()
        assert policy.modality is not None
        if endpoint == "get_modality_config":
            return modality_config_reply(policy.modality, self.settings.gr00t_modality_form)
        try:
            request = parse_get_action(decode_value(data), policy.modality)
            tensors = observation_to_tensors(policy, request.observation, None, request.rows)
        except ProtocolError as error:
            raise Refused(str(error), "bad_request") from None
        outputs = await self.infer(policy, tensors, request_id)
        response = rows_response(policy, outputs)
        problem = nonfinite_answer(policy, response)
        if problem is not None:
            raise Refused(problem, "nonfinite_output")
        return action_reply(request, response, policy.modality)

    async def policy(self) -> Policy:
        name = self.settings.gr00t_policy
        policy = await self.backend.policy(name)
        if policy is None:
            reason = self.backend.config_errors.get(name)
            known = ", ".join(sorted(self.backend.policies)) or "none (is Triton up?)"
            raise Refused(f"policy {name!r} is not available ({reason or 'not served by Triton'}); policies: {known}. "
                          "The server's --gr00t-policy chooses the policy GR00T clients get", "unknown_policy")
        if policy.modality is None:
            raise Refused(f"policy {name!r} has no 'gr00t_modality_config' parameter, so GR00T clients cannot be told "
                          "what to send; see the README's section for GR00T users", "not_gr00t")
        if policy.stateful:
            raise Refused(f"policy {name!r} is stateful; the GR00T endpoint serves stateless policies", "stateful")
        return policy

    async def infer(self, policy: Policy, tensors: dict[str, np.ndarray], request_id: str) -> dict[str, np.ndarray]:
        """One Triton call for the request's rows, or several of at most the policy's batch size, concurrently;
        when one fails, the others are cancelled (their answers could not be used)."""
        rows = len(next(iter(tensors.values())))
        size = policy.max_batch_size or rows
        chunks = [{name: value[start:start + size] for name, value in tensors.items()}
                  for start in range(0, rows, size)]
        try:
            results = await _all_or_none([self.backend.infer(policy, chunk, f"{request_id}-{i}")
                                          for i, chunk in enumerate(chunks)])
        except BackendUnavailable as error:
            raise Refused(str(error), "backend_unavailable") from None
        except BackendRejected as error:
            raise Refused(f"policy {policy.name!r} failed on this observation: {error}", "backend_error") from None
        if len(results) == 1:
            return results[0]
        return {name: np.concatenate([result[name] for result in results]) for name in results[0]}


async def _all_or_none(calls: list[Awaitable[Any]]) -> list[Any]:
    """Every call's result in order; the first failure cancels the others (and is raised once they ended)."""
    tasks = [asyncio.ensure_future(c) for c in calls]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
    finally:  # a failure, or this request itself cancelled: nothing of it may run on
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    failed = [task for task in tasks if not task.cancelled() and task.exception() is not None]
    if failed:
        raise failed[0].exception()  # type: ignore[misc]
    return [task.result() for task in tasks]

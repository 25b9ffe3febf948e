"""A GR00T policy client written to Isaac GR00T's wire protocol (ZeroMQ REQ, one msgpack map per request,
arrays as `np.save` bytes under `__ndarray_class__`), in both msgpack generations: N1.5 (flat observation
-> flat `action.*` map) and N1.6 (`{observation, options}` -> `[action, info]`, nested observation).
The GR00T package is on no package registry; this is what the load generator and the tests drive a
server with. It shares no code with the server's decoder, so the two check each other.
"""

from __future__ import annotations

import asyncio
import io
import json
from collections.abc import Mapping, Sequence
from typing import Any

import msgpack
import numpy as np
import zmq
import zmq.asyncio

from openpi_triton.config import GR00T_GENERATIONS, GR00T_N15, GR00T_N16, GR00T_PORT
from openpi_triton.example_observations import Observation, make_observations
from openpi_triton.loadgen.fleet import ChannelBroken, ServerError
from openpi_triton.npy import load_npy

GENERATIONS = GR00T_GENERATIONS
OBSERVATION_POOL = 8


def _pack_default(obj: Any) -> Any:
    if isinstance(obj, np.ndarray):
        buffer = io.BytesIO()
        np.save(buffer, obj, allow_pickle=False)
        return {"__ndarray_class__": True, "as_npy": buffer.getvalue()}
    raise TypeError(f"cannot encode {type(obj).__name__}")


def _unpack_hook(obj: dict[str, Any]) -> Any:
    if obj.get("__ndarray_class__") is True:
        return load_npy(obj["as_npy"])
    if obj.get("__ModalityConfig_class__") is True:
        body = obj["as_json"]
        return json.loads(body) if isinstance(body, str) else body  # N1.5: a JSON string; N1.6: a map
    return obj


def pack_request(endpoint: str, data: Any = None, api_token: str | None = None) -> bytes:
    """A request as GR00T's clients send it: `data` only for endpoints with input, `api_token` only when set."""
    request: dict[str, Any] = {"endpoint": endpoint}
    if data is not None:
        request["data"] = data
    if api_token is not None:
        request["api_token"] = api_token
    return msgpack.packb(request, default=_pack_default, use_bin_type=True)


def unpack_reply(body: bytes) -> Any:
    return msgpack.unpackb(body, raw=False, object_hook=_unpack_hook)


def _raise_on_error(reply: Any) -> Any:
    if isinstance(reply, dict) and "error" in reply:
        raise ServerError(f"Server error: {reply['error']}")
    return reply


def _batched(value: Any, environments: int) -> Any:
    return np.stack([value] * environments) if isinstance(value, np.ndarray) else value


def action_data(observation: Observation, generation: str, environments: int | None = None) -> dict[str, Any]:
    """The `data` of a get_action from an observation in flat GR00T keys (`video.<cam>`, `state.<key>`, a
    language key with one text) for `environments` environments (None: N1.5's unbatched form)."""
    if generation not in GENERATIONS:
        raise ValueError(f"generation must be one of {GENERATIONS}, got {generation!r}")
    envs = environments or 1
    if generation == GR00T_N15:
        flat = {key: value if environments is None else _batched(value, envs) for key, value in observation.items()
                if not isinstance(value, str)}
        flat.update({key: [value] * envs for key, value in observation.items() if isinstance(value, str)})
        return flat
    nested: dict[str, dict[str, Any]] = {"video": {}, "state": {}, "language": {}}
    for key, value in observation.items():
        group, _, name = key.partition(".")
        if group in ("video", "state") and not isinstance(value, str):
            nested[group][name] = _batched(value, envs)
        else:
            nested["language"][key] = [[value]] * envs
    return {"observation": nested, "options": None}


class Gr00tClient:
    """A blocking client, as GR00T's own (one REQ socket; `timeout_ms` applied, as its newest clients do)."""

    def __init__(self, host: str = "localhost", port: int = GR00T_PORT, api_token: str | None = None,
                 timeout_ms: int = 15000) -> None:
        self.address, self.api_token, self.timeout_ms = f"tcp://{host}:{port}", api_token, timeout_ms
        self.context = zmq.Context()
        self.socket = self._connect()

    def _connect(self) -> zmq.Socket:
        sock = self.context.socket(zmq.REQ)
        sock.setsockopt(zmq.RCVTIMEO, self.timeout_ms)
        sock.setsockopt(zmq.SNDTIMEO, self.timeout_ms)
        sock.setsockopt(zmq.LINGER, 0)
        sock.connect(self.address)
        return sock

    def raw(self, body: bytes) -> Any:
        """Send `body` as it is and return the decoded reply (errors included, not raised)."""
        try:
            self.socket.send(body)
            return unpack_reply(self.socket.recv())
        except zmq.Again:  # as GR00T's newest client: a fresh socket, then the error
            self.socket.close(linger=0)
            self.socket = self._connect()
            raise

    def call(self, endpoint: str, data: Any = None) -> Any:
        return _raise_on_error(self.raw(pack_request(endpoint, data, self.api_token)))

    def ping(self) -> Any:
        return self.call("ping")

    def get_modality_config(self) -> dict[str, Any]:
        return self.call("get_modality_config")

    def get_action(self, observation: Observation, generation: str = GR00T_N16, environments: int | None = None) -> Any:
        return self.call("get_action", action_data(observation, generation, environments))

    def reset(self) -> Any:
        return self.call("reset", {"options": None})

    def close(self) -> None:
        self.socket.close(linger=0)
        self.context.term()

    def __enter__(self) -> Gr00tClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Gr00tChannel:
    """One simulated GR00T robot for the load generator (`openpi_triton.loadgen.fleet.Channel`), on its own
    REQ socket; requests are encoded once up front, as the websocket robots' are."""

    def __init__(self, context: zmq.asyncio.Context, address: str, frames: Sequence[bytes], offset: int) -> None:
        self.socket = context.socket(zmq.REQ)
        self.socket.setsockopt(zmq.LINGER, 0)
        self.socket.connect(address)
        self.frames, self.count = frames, offset

    async def call(self) -> float | None:
        frame = self.frames[self.count % len(self.frames)]
        self.count += 1
        try:
            await self.socket.send(frame)
            reply = unpack_reply(await asyncio.wait_for(self.socket.recv(), 60))
        except (zmq.ZMQError, asyncio.TimeoutError) as error:
            raise ChannelBroken(f"no reply: {error!r}") from None
        _raise_on_error(reply)
        actions = reply[0] if isinstance(reply, list) else reply
        if not isinstance(actions, Mapping) or not actions:
            raise ServerError(f"reply without actions: {type(reply).__name__}")
        return None  # GR00T replies carry no server timing

    async def close(self) -> None:
        self.socket.close(linger=0)


def encode_requests(format_name: str, generation: str = GR00T_N16, count: int = OBSERVATION_POOL, seed: int = 0,
                    api_token: str | None = None) -> list[bytes]:
    return [pack_request("get_action", action_data(obs, generation, 1 if generation == GR00T_N16 else None), api_token)
            for obs in make_observations(format_name, count, seed)]

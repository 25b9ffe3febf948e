"""GET /readyz answers from cached state (a background task asks the backend), so the Kubernetes probe never
waits on Triton; the front is ready while its default policy is; `?policy=NAME` tells one policy's state.
No Triton here: backends that answer at once, or never."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator

import pytest
from starlette.testclient import TestClient

from benchmarks.instant_backend import InstantBackend
from openpi_triton import config
from openpi_triton.config import Settings
from openpi_triton.front.app import create_app, front_server
from openpi_triton.process import free_port

from .conftest import MODEL_REPOSITORY


def backend(*names: str) -> InstantBackend:
    return InstantBackend([(MODEL_REPOSITORY, name) for name in names])


class OneDown(InstantBackend):
    """`droid`'s models are down; the others are ready."""

    async def readiness(self, names: list[str]) -> tuple[bool, str]:
        if "droid" in names:
            return False, "policy 'droid' is not ready: model 'droid_preprocess' is down: its stub died"
        return True, "ready"


class NeverAnswers(InstantBackend):
    """A Triton that takes the readiness calls and never answers them (a hung server, a black-holed route)."""

    async def readiness(self, names: list[str]) -> tuple[bool, str]:
        await asyncio.Event().wait()
        raise AssertionError("unreachable")


def test_one_policy_down_leaves_the_front_ready_and_is_named():
    down = OneDown([(MODEL_REPOSITORY, name) for name in ("libero", "droid")])
    with TestClient(create_app(Settings(default_policy="libero"), backend=down)) as client:
        front = client.get("/readyz")
        assert front.status_code == 200
        assert "policy 'droid' is not ready: model 'droid_preprocess' is down" in front.text
        assert client.get("/readyz", params={"policy": "droid"}).status_code == 503
        assert client.get("/readyz", params={"policy": "libero"}).status_code == 200
        unknown = client.get("/readyz", params={"policy": "nope"})
        assert unknown.status_code == 404 and "available policies: droid, libero" in unknown.text


def test_the_default_policy_down_takes_the_front_out():
    down = OneDown([(MODEL_REPOSITORY, name) for name in ("libero", "droid")])
    with TestClient(create_app(Settings(default_policy="droid"), backend=down)) as client:
        front = client.get("/readyz")
        assert front.status_code == 503 and "droid_preprocess" in front.text


@contextlib.contextmanager
def serving(app, settings: Settings) -> Iterator[str]:
    server = front_server(app, settings, log_level="warning", lifespan="on")
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "the front did not start"
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{settings.port}"
    finally:
        server.should_exit = True
        thread.join(30)


def test_a_backend_that_never_answers_still_gets_an_immediate_answer(monkeypatch):
    monkeypatch.setattr(config, "READINESS_CHECK_TIMEOUT_S", 0.2)
    monkeypatch.setattr(config, "READINESS_REFRESH_S", 0.05)
    settings = Settings(host="127.0.0.1", port=free_port(), default_policy="libero", drain_timeout_s=0.1)
    with serving(create_app(settings, backend=NeverAnswers([(MODEL_REPOSITORY, "libero")])), settings) as url:
        for _ in range(3):  # each from the cache, however many refreshes hang meanwhile
            with pytest.raises(urllib.error.HTTPError) as answer:
                urllib.request.urlopen(url + "/readyz", timeout=5)  # a bounded wait: never Triton's
            assert answer.value.code == 503
            assert "got no answer within 0.2 s" in answer.value.read().decode()


def test_readiness_is_refreshed_in_the_background():
    class Flipping(InstantBackend):
        ready = False

        async def readiness(self, names: list[str]) -> tuple[bool, str]:
            return self.ready, "ready" if self.ready else "policy 'libero': model not ready in Triton"

    flipping = Flipping([(MODEL_REPOSITORY, "libero")])
    app = create_app(Settings(default_policy="libero"), backend=flipping)
    with TestClient(app) as client:
        assert client.get("/readyz").status_code == 503
        flipping.ready = True
        client.portal.call(app.state.readiness.refresh)  # what the background task does every second
        assert client.get("/readyz").status_code == 200


def test_readiness_and_discovery_never_touch_the_inference_channel():
    """Calls to a Triton that is down put their channel into reconnect backoff: made every second by the
    readiness refresher on the inference channel, they would fail the first inference after a restart."""
    from openpi_triton.process import free_port
    from openpi_triton.triton.client import TritonBackend

    class InferenceChannel:
        def __getattr__(self, name: str):
            raise AssertionError(f"{name} called on the inference channel")

    async def scenario() -> tuple[bool, str]:
        backend = TritonBackend(f"127.0.0.1:{free_port()}", timeout_s=5.0)  # nothing listens
        backend._client = InferenceChannel()
        try:
            await backend.discover(force=True)
            return await backend.readiness(["libero"])
        finally:
            backend._client = None
            await backend.close()

    ready, reason = asyncio.run(scenario())
    assert not ready and "is unreachable" in reason

"""The embedded tritonserver launcher: clear errors, and no orphans when its parent dies."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading

import numpy as np
import pytest

from openpi_triton.process import die_with_parent, free_port, url_answers
from openpi_triton.triton import embedded
from openpi_triton.triton.embedded import EmbeddedTriton, EmbeddedTritonError

from .conftest import TEST_MODEL_REPOSITORY, start_again_if_exited
from .waiting import wait_until


def test_a_taken_port_is_named_with_what_to_do():
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        taken = squatter.getsockname()[1]
        server = EmbeddedTriton([TEST_MODEL_REPOSITORY], http_port=free_port(), grpc_port=taken)
        with pytest.raises(EmbeddedTritonError, match=rf"gRPC port {taken} already in use.*choose other ports"):
            server.start()


def test_free_ports_are_never_handed_out_twice():
    ports = [free_port() for _ in range(500)]
    assert len(set(ports)) == len(ports)


def test_a_missing_binary_says_how_to_install_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "pytriton", None)  # as if the wheel were not installed
    with pytest.raises(EmbeddedTritonError, match=r"nvidia-pytriton wheel is not installed.*pip install"):
        embedded.find_triton()


def test_a_missing_repository_is_named(tmp_path):
    with pytest.raises(EmbeddedTritonError, match="does not exist"):
        EmbeddedTriton([tmp_path / "nowhere"], http_port=free_port(), grpc_port=free_port()).start()




@pytest.mark.integration
def test_no_orphan_tritonserver_when_the_parent_is_killed():
    script = textwrap.dedent(f"""
        import time
        from pathlib import Path
        from openpi_triton.process import free_port
        from openpi_triton.triton.embedded import EmbeddedTriton
        server = EmbeddedTriton([Path({str(TEST_MODEL_REPOSITORY)!r})], http_port=free_port(),
                                grpc_port=free_port(), metrics_port=free_port())
        server.start()
        print(server.pid, flush=True)
        time.sleep(600)
    """)
    parent = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    triton_pid = int(parent.stdout.readline())  # bounded by the test's timeout (pytest-timeout)
    assert os.path.exists(f"/proc/{triton_pid}")
    parent.send_signal(signal.SIGKILL)  # no cleanup code runs
    parent.wait()
    wait_until(lambda: not _alive(triton_pid), "tritonserver ends with its parent")


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.integration
def test_children_start_while_grpc_threads_are_busy(triton):
    """Tests and benchmarks start servers from a process whose gRPC clients are busy in other threads.
    Forking with gRPC's fork handlers in place, about one child in fifty aborted before it ran."""
    import tritonclient.grpc as grpcclient

    stop = threading.Event()

    def busy_client() -> None:
        client = grpcclient.InferenceServerClient(triton.grpc_url)
        while not stop.is_set():
            client.is_server_live()

    threads = [threading.Thread(target=busy_client, daemon=True) for _ in range(4)]
    for thread in threads:
        thread.start()
    try:
        codes = [subprocess.run(die_with_parent([sys.executable, "-S", "-c", "pass"]),
                                stderr=subprocess.DEVNULL, check=False).returncode for _ in range(150)]
    finally:
        stop.set()
        for thread in threads:
            thread.join(30)
    assert not any(thread.is_alive() for thread in threads), "a busy gRPC client did not stop"
    assert codes.count(0) == len(codes), f"{len(codes) - codes.count(0)} of {len(codes)} children failed"



def _kill(pid: int) -> None:
    os.kill(pid, signal.SIGKILL)
    wait_until(lambda: not _alive(pid), f"process {pid} is gone after SIGKILL")


@pytest.mark.integration
def test_a_dead_stub_comes_back_with_a_reload_and_stop_leaves_nothing_behind():
    """Triton 2.51 never restarts a dead stub itself, keeps its model READY, and loading a loaded model
    does nothing: `reload_model` unloads and loads it. A dead stub used to keep tritonserver's shutdown
    waiting 30 s, and its shared-memory region leaked."""
    import tritonclient.grpc as grpcclient

    from openpi_triton.process import group_members
    from openpi_triton.triton.grpc_tensors import infer_inputs

    server = EmbeddedTriton([TEST_MODEL_REPOSITORY], http_port=free_port(), grpc_port=free_port(),
                            metrics_port=free_port()).start()
    try:
        client = grpcclient.InferenceServerClient(server.grpc_url)
        request = infer_inputs({"delay": np.zeros((1, 1), np.float32), "payload": np.zeros((1, 4), np.uint8)})
        stubs = {model: pid for pid, model in server.python_stubs().items()}
        assert set(stubs) == {"slow_policy", "session_counter"}

        _kill(stubs["slow_policy"])
        with pytest.raises(grpcclient.InferenceServerException, match="Stub process 'slow_policy_0_0' is not healthy"):
            client.infer("slow_policy", request)
        assert client.is_model_ready("slow_policy")
        server.reload_model("slow_policy")
        assert client.infer("slow_policy", request).as_numpy("echo").shape == (1, 1)
        assert "slow_policy" in server.python_stubs().values() and stubs["slow_policy"] not in server.python_stubs()

        group, regions = server.pid, server.shared_memory_regions()
        assert len(regions) >= 2
        _kill(stubs["session_counter"])
    finally:
        server.stop()
    assert group_members(group) == []
    assert [region for region in regions if region.exists()] == []


@pytest.mark.integration
def test_a_session_tritonserver_that_died_is_started_again_for_the_next_test(second_triton):
    os.kill(second_triton.pid, signal.SIGKILL)
    wait_until(second_triton.exited, "the killed tritonserver exits", 30)
    with pytest.warns(UserWarning, match="'second_triton' had exited; started again"):
        assert start_again_if_exited("second_triton", second_triton)
    assert url_answers(f"{second_triton.http_url}/v2/health/ready")
    assert not start_again_if_exited("second_triton", second_triton)  # a running one is left alone

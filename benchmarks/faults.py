"""Fault injection against `openpi-triton serve` (embedded tritonserver, the shipped policies), with
robots on the stock openpi_client (the tests' robots, tests/robots.py), for the figures in the reliability notes:

  kill tritonserver   SIGKILL under load: time until every robot has actions again, websockets lost,
                      processes and /dev/shm regions of the dead server left after it
  kill a stub         SIGKILL of libero_preprocess's python stub: time until every LIBERO robot has actions
                      again, errors seen by the other robots, /readyz while it was down
  SIGTERM             under load: of the frames robots had sent before the signal, how many got answers
  hostile frames      frames a robot could send by mistake or malice: how many got an answer (error text or
                      actions) on a connection that still serves the next valid frame

    .venv/bin/python -m benchmarks.faults --robots 16 --output bench-results/faults.json

Times are measured from the signal to the robots' first answer after it, on this machine's clock.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import msgpack
import numpy as np
from openpi_client import msgpack_numpy
from websockets.sync.client import connect

from benchmarks.arguments import add_flags
from openpi_triton.example_observations import libero
from openpi_triton.process import Child, children, free_port, group_members
from openpi_triton.triton.embedded import python_stubs_of, shared_memory_regions_of
from tests.robots import Robot, robot, wait_for


class Server:
    """`openpi-triton serve` as a child process (`process.Child`), ready when its /readyz answers 200."""

    def __init__(self, model_repository: Path, *flags: str) -> None:
        self.port = free_port()
        command = [sys.executable, "-m", "openpi_triton", "serve", "--host", "127.0.0.1", "--port", str(self.port),
                   "--model-repository", str(model_repository), "--triton-grpc-port", str(free_port()),
                   "--triton-http-port", str(free_port()), "--triton-metrics-port", str(free_port()), *flags]
        self.child = Child.start("faults-serve", command)
        self.child.wait_ready(f"http://127.0.0.1:{self.port}/readyz", 180)

    def http(self, path: str) -> tuple[int, str]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=30) as response:
                return response.status, response.read().decode()
        except urllib.error.HTTPError as error:
            return error.code, error.read().decode()
        except OSError as error:
            return 0, str(error)

    def tritonserver(self) -> int:
        found = children(self.child.pid, "tritonserver")
        if not found:
            raise RuntimeError("no tritonserver")
        return found[0]

    def stop(self) -> None:
        self.child.stop(120)


def first_ok_after(robot: Robot, moment: float) -> float | None:
    return next((answered for sent, answered, kind in robot.frames() if sent >= moment and kind == "ok"), None)


def outcomes_after(robot: Robot, moment: float) -> dict[str, int]:
    counts: dict[str, int] = {}
    for sent, _, kind in robot.frames():
        if sent >= moment:
            counts[kind] = counts.get(kind, 0) + 1
    return counts


def start_fleet(port: int, robots: int) -> list[Robot]:
    """Closed-loop robots on the stock openpi_client (the tests' robots), the policies in turn."""
    policies = ["libero", "droid", "aloha"]
    fleet = [robot(f"127.0.0.1:{port}", policies[i % 3], i) for i in range(robots)]
    wait_for(lambda: all(r.served_since(0) for r in fleet), 120, "every robot has actions")
    time.sleep(2)  # steady state
    return fleet


def stop_fleet(fleet: list[Robot]) -> None:
    for one in fleet:
        one.close()


def recovery(fleet: list[Robot], moment: float, timeout_s: float = 180) -> float | None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        firsts = [first_ok_after(robot, moment) for robot in fleet]
        if all(firsts):
            return max(firsts) - moment
        time.sleep(0.05)
    return None


def kill_tritonserver(server: Server, robots: int) -> dict[str, Any]:
    fleet = start_fleet(server.port, robots)
    old = server.tritonserver()
    regions = shared_memory_regions_of(old)
    killed = time.monotonic()
    os.kill(old, signal.SIGKILL)
    recovered = recovery(fleet, killed)
    time.sleep(1)
    stop_fleet(fleet)
    outcomes: dict[str, int] = {}
    for one in fleet:
        for kind, count in outcomes_after(one, killed).items():
            outcomes[kind] = outcomes.get(kind, 0) + count
    return {"robots": robots, "seconds_to_every_robot_served": recovered, "frames_after_kill": outcomes,
            "websockets_lost": sum(1 for one in fleet if "closed" in outcomes_after(one, killed)),
            "processes_of_dead_server_left": len(group_members(old)),
            "shm_regions_of_dead_server_left": sum(region.exists() for region in regions)}


def kill_stub(server: Server, robots: int, model: str = "libero_preprocess") -> dict[str, Any]:
    fleet = start_fleet(server.port, robots)
    triton = server.tritonserver()
    stub = next(pid for pid, name in python_stubs_of(triton).items() if name == model)
    readiness: list[tuple[float, int, str]] = []
    done = threading.Event()

    def poll() -> None:
        while not done.is_set():
            status, body = server.http("/readyz")
            readiness.append((time.monotonic(), status, body.strip()))
            time.sleep(0.05)

    poller = threading.Thread(target=poll, daemon=True)
    poller.start()
    killed = time.monotonic()
    os.kill(stub, signal.SIGKILL)
    affected = [one for one in fleet if one.policy == "libero"]
    recovered = recovery(affected, killed)
    time.sleep(1)
    done.set()
    poller.join(30)
    stop_fleet(fleet)
    others: dict[str, int] = {}
    for one in fleet:
        if one.policy != "libero":
            for kind, count in outcomes_after(one, killed).items():
                others[kind] = others.get(kind, 0) + count
    not_ready = [(t - killed, body) for t, status, body in readiness if status != 200 and t >= killed]
    return {"robots": robots, "libero_robots": len(affected), "seconds_to_every_libero_robot_served": recovered,
            "other_robots_frames_after_kill": others, "tritonserver_restarted": server.tritonserver() != triton,
            "readyz_not_ready_seconds": [round(not_ready[0][0], 2), round(not_ready[-1][0], 2)] if not_ready else None,
            "readyz_example": not_ready[0][1] if not_ready else None}


def sigterm(model_repository: Path, robots: int) -> dict[str, Any]:
    server = Server(model_repository, "--drain-timeout", "30")
    fleet = start_fleet(server.port, robots)
    triton = server.tritonserver()
    regions = shared_memory_regions_of(triton)
    signalled = time.monotonic()
    server.child.process.send_signal(signal.SIGTERM)
    code = server.child.process.wait(120)
    stopped = time.monotonic() - signalled
    for one in fleet:
        one.thread.join(30)
    # In flight: sent before the signal, not answered before it.
    in_flight = [(sent, kind) for one in fleet for sent, answered, kind in one.frames()
                 if sent < signalled and (answered >= signalled)]
    answered = sum(1 for _, kind in in_flight if kind == "ok")
    stop_fleet(fleet)
    server.stop()  # what is left of it: its log
    return {"robots": robots, "in_flight_at_sigterm": len(in_flight), "answered": answered,
            "last_frame_of_each_robot": sorted({kind for one in fleet for _, _, kind in one.frames()[-1:]}),
            "exit_code": code, "seconds_to_exit": round(stopped, 2),
            "processes_left": len(group_members(triton)),
            "shm_regions_left": sum(region.exists() for region in regions)}


def _marker(dtype: str, shape: Any, data: Any) -> dict[str, Any]:
    return {"__ndarray__": True, "data": data, "dtype": dtype, "shape": shape}


def _unicode(code_points: list[int]) -> dict[str, Any]:
    """A NumPy string scalar holding any 32-bit code points, as NumPy itself stores them."""
    return _marker(f"<U{len(code_points)}", [], np.array(code_points, "<u4").tobytes())


def hostile_frames() -> dict[str, bytes | str]:
    valid = libero(np.random.default_rng(0))

    def with_(**changes: Any) -> dict[str, Any]:
        return {**valid, **changes}

    def pack(obj: Any) -> bytes:
        return msgpack.packb(obj, default=msgpack_numpy.pack_array, unicode_errors="surrogatepass")

    state = "observation/state"
    frames: dict[str, bytes | str] = {
        "text frame": "hello",
        "empty binary": b"",
        "not msgpack": b"\xc1\xc1\xc1",
        "truncated msgpack": pack(valid)[:100],
        "msgpack list": pack([1, 2, 3]),
        "msgpack int": pack(7),
        "nil": pack(None),
        "arrays nested 100000 deep": b"\x91" * 100_000,
        "nested maps 20 deep": pack(with_(**{"a": json.loads('{"b":' * 20 + "1" + "}" * 20)})),
        "int map key": b"\x81\x01\x02",
        "ext type": pack(with_(**{state: msgpack.ExtType(5, b"xx")})),
        "timestamp": pack(with_(**{state: msgpack.Timestamp(1, 0)})),
        "short array data": pack(with_(**{state: _marker("<f8", [8], b"\0" * 7)})),
        "huge claimed shape": pack({"x": _marker("<f8", [10**6, 10**6], b"\0" * 8)}),
        "negative shape": pack({"x": _marker("<f4", [-1], b"")}),
        "shape not a list": pack({"x": _marker("<f4", 3, b"\0" * 12)}),
        "shape of 40 dims": pack({"x": _marker("<f4", [1] * 40, b"\0" * 4)}),
        "object dtype": pack({"x": _marker("|O", [1], b"\0" * 8)}),
        "void dtype": pack({"x": _marker("|V8", [1], b"\0" * 8)}),
        "complex dtype": pack({"x": _marker("<c8", [1], b"\0" * 8)}),
        "datetime dtype": pack({"x": _marker("<M8[s]", [1], b"\0" * 8)}),
        "dtype <f3": pack({"x": _marker("<f3", [1], b"\0" * 3)}),
        "dtype as int": pack({"x": _marker(5, [1], b"\0" * 4)}),
        "data as str": pack({"x": _marker("<f4", [1], "abcd")}),
        "scalar overflow": pack({"x": {"__npgeneric__": True, "data": 10**19, "dtype": "<i8"}}),
        "missing key": pack({k: v for k, v in valid.items() if k != state}),
        "float image": pack(with_(**{"observation/image": np.zeros((224, 224, 3))})),
        "uint16 image": pack(with_(**{"observation/image": np.zeros((224, 224, 3), np.uint16)})),
        "4-channel image": pack(with_(**{"observation/image": np.zeros((224, 224, 4), np.uint8)})),
        "empty image": pack(with_(**{"observation/image": np.zeros((0, 0, 3), np.uint8)})),
        "9-dim state": pack(with_(**{state: np.zeros(9)})),
        "ragged list state": pack(with_(**{state: [[1.0], [1.0, 2.0]]})),
        "string state": pack(with_(**{state: "eight"})),
        "nan state": pack(with_(**{state: np.full(8, np.nan)})),
        "inf state": pack(with_(**{state: np.full(8, np.inf)})),
        "state beyond float32": pack(with_(**{state: np.full(8, 1e39)})),
        "state 3e38 (finite, extreme)": pack(with_(**{state: np.full(8, 3e38)})),
        "state -3e38": pack(with_(**{state: np.full(8, -3e38)})),
        "prompt as int": pack(with_(prompt=5)),
        "prompt 100 kB": pack(with_(prompt="x" * 100_000)),
        "prompt with a lone surrogate (msgpack str)": pack(with_(prompt="a\ud800b")),
        "prompt with a lone surrogate (numpy <U)": pack(with_(prompt=_unicode([0x61, 0xD800]))),
        "prompt beyond U+10FFFF": pack(with_(prompt=_unicode([0x110000]))),
        "prompt as invalid utf-8 bytes": pack(with_(prompt=b"\xff\xfe")),
        "unknown endpoint": pack(with_(endpoint="teleport")),
        "endpoint array of strings": pack(with_(endpoint=np.array(["infer", "reset"]))),
        "endpoint int": pack(with_(endpoint=1)),
        "endpoint map": pack(with_(endpoint={"a": 1})),
        "session_id array": pack(with_(session_id=np.array(["a", "b"]))),
        "session_id float": pack(with_(session_id=1.5)),
        "session_id 1 MB": pack(with_(session_id="s" * 1_000_000)),
        "seed negative": pack(with_(seed=-1)),
        "seed float": pack(with_(seed=0.5)),
        "seed 2^64-1": pack(with_(seed=2**64 - 1)),
        "seed array": pack(with_(seed=np.array([1, 2]))),
    }
    return frames


def hostile(port: int) -> dict[str, Any]:
    handled, failures = 0, {}
    frames = hostile_frames()
    valid = msgpack_numpy.packb(libero(np.random.default_rng(1)))
    for name, frame in frames.items():
        try:
            with connect(f"ws://127.0.0.1:{port}/", compression=None, max_size=None, open_timeout=30) as ws:
                ws.recv(30)
                ws.send(frame)
                ws.recv(30)  # text (an error) or binary (actions), but an answer
                ws.send(valid)
                answer = ws.recv(30)
            if isinstance(answer, bytes) and "actions" in msgpack_numpy.unpackb(answer):
                handled += 1
            else:
                failures[name] = f"after it, a valid frame got {str(answer)[:80]}"
        except Exception as error:  # whatever happens is the finding
            failures[name] = f"{type(error).__name__}: {error}"[:160]
    return {"tried": len(frames), "handled": handled, "not_handled": failures}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_flags(parser, "model-repository", "output", output=Path("bench-results/faults.json"))
    parser.add_argument("--robots", type=int, default=16)
    parser.add_argument("--sigterm-robots", type=int, default=8)
    args = parser.parse_args(argv)
    results: dict[str, Any] = {}
    server = Server(args.model_repository)
    try:
        results["hostile_frames"] = hostile(server.port)
        print(json.dumps(results, indent=1), flush=True)
        results["kill_tritonserver"] = kill_tritonserver(server, args.robots)
        print(json.dumps(results["kill_tritonserver"], indent=1), flush=True)
        results["kill_stub"] = kill_stub(server, args.robots)
        print(json.dumps(results["kill_stub"], indent=1), flush=True)
    finally:
        server.stop()
    results["sigterm"] = sigterm(args.model_repository, args.sigterm_robots)
    print(json.dumps(results["sigterm"], indent=1), flush=True)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(results, indent=1))
    print(f"written to {args.output}")


if __name__ == "__main__":
    main()

"""Health bookkeeping shared by the front and the supervisor: what /readyz, /metrics and the robots'
error texts say about outages, and which failed calls ask the supervisor to heal a model."""

from __future__ import annotations

import time

from openpi_triton.triton.health import Health, unhealthy_stub_model


def test_the_dead_stub_error_names_its_model():
    message = "in ensemble 'libero', Stub process 'libero_preprocess_0_0' is not healthy."
    assert unhealthy_stub_model(message) == "libero_preprocess"
    assert unhealthy_stub_model("Stub process 'policy_core_1_12' is not healthy.") == "policy_core"
    assert unhealthy_stub_model("in ensemble 'libero', inference failed: bad input") is None


def test_a_failed_call_asks_once_and_is_forgotten_after_the_reload():
    health = Health(heals=True)
    before = time.monotonic()
    health.call_failed("libero_preprocess", "its python stub process is not healthy", before)
    assert health.wake.is_set()
    assert "model 'libero_preprocess' is down" in health.problem(["libero", "libero_preprocess"])
    assert health.problem(["droid", "droid_preprocess"]) is None
    assert set(health.take_heal_requests()) == {"libero_preprocess"}
    assert health.take_heal_requests() == {}

    health.model_up("libero_preprocess", reloaded=True)
    # A call made before the reload and failing after it says nothing about the reloaded model.
    health.call_failed("libero_preprocess", "its python stub process is not healthy", before)
    assert health.problem(["libero_preprocess"]) is None and health.take_heal_requests() == {}
    # One made after it does.
    health.call_failed("libero_preprocess", "its python stub process is not healthy", time.monotonic())
    assert health.take_heal_requests() and health.problem(["libero_preprocess"])


def test_a_known_outage_keeps_its_reason_and_counts_once():
    health = Health(heals=True)
    health.model_down("policy_core", "its python stub (pid 42) died", "reloading model 'policy_core'")
    health.call_failed("policy_core", "its python stub process is not healthy", time.monotonic())
    assert "pid 42" in health.problem(["policy_core"])
    health.model_up("policy_core", reloaded=True)
    counters = health.counters()
    assert counters.outages == {"policy_core": 1} and counters.reloads == {"policy_core": 1}
    assert counters.outage_seconds["policy_core"] >= 0


def test_a_server_outage_covers_every_model_and_a_restart_clears_them():
    health = Health(heals=True)
    health.model_down("libero_preprocess", "its python stub died", "reloading it")
    health.server_down("tritonserver (pid 7) was killed by SIGKILL", "restarting it")
    health.server_down("tritonserver (pid 7) was killed by SIGKILL; restart attempt 1 failed", "restarting it in 2 s")
    assert health.problem(["droid"]).startswith("tritonserver is down: tritonserver (pid 7) was killed")
    health.server_up(restarted=True)
    assert health.problem(["droid", "libero_preprocess"]) is None
    counters = health.counters()
    assert counters.restarts == 1 and counters.outages == {"tritonserver": 1, "libero_preprocess": 1}


def test_without_a_supervisor_a_successful_call_ends_the_outage():
    health = Health(heals=False)
    health.call_failed("libero_preprocess", "its python stub process is not healthy", time.monotonic())
    assert not health.wake.is_set() and health.take_heal_requests() == {}
    assert health.problem(["libero_preprocess"]) == ("model 'libero_preprocess' is down: its python stub "
                                                      "process is not healthy")
    health.call_succeeded(["libero", "libero_preprocess", "policy_core"])
    assert health.problem(["libero_preprocess"]) is None

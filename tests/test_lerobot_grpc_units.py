"""The LeRobot endpoint's pieces without a network: wire format, access list, feature mapping against
LeRobot's own helpers, and the reply pickle as LeRobot's client reads it."""

from __future__ import annotations

import pickle
import time

import numpy as np
import pytest

from openpi_triton.front.lerobot import wire
from openpi_triton.front.lerobot.access import AccessError, parse_networks, peer_allowed
from openpi_triton.front.lerobot.features import FeatureError, bind
from openpi_triton.front.lerobot.replies import ReplyTooLarge, encode_actions
from openpi_triton.front.lerobot.unpickle import read_instructions
from tests.lerobot_pickles import RemotePolicyConfig, dumps_as, features
from tests.test_lerobot_grpc_server import JOINTS, TINY


def test_the_service_matches_lerobots_own_descriptor():
    services = pytest.importorskip("lerobot.transport.services_pb2")
    from google.protobuf import descriptor_pb2

    def proto(file):
        message = descriptor_pb2.FileDescriptorProto()
        file.CopyToProto(message)
        return message

    theirs, ours = proto(services.DESCRIPTOR), proto(wire.FILE)
    for message in ours.message_type:
        assert message == next(m for m in theirs.message_type if m.name == message.name)
    assert list(ours.enum_type) == list(theirs.enum_type)
    service = next(s for s in theirs.service if s.name == "AsyncInference")
    assert sorted(map(str, service.method)) == sorted(map(str, ours.service[0].method))
    assert services.Observation(transfer_state=2, data=b"x").SerializeToString() == wire.Observation(
        transfer_state=2, data=b"x").SerializeToString()


def test_allow_list():
    networks = parse_networks("10.8.0.0/24, 192.168.1.7,fd00::/8")
    assert peer_allowed("ipv4:10.8.0.9:5000", networks)
    assert peer_allowed("ipv4:192.168.1.7:1", networks)
    assert not peer_allowed("ipv4:192.168.1.8:1", networks)
    assert peer_allowed("ipv6:[fd00::1]:5000", networks)
    assert peer_allowed("ipv6:[::ffff:10.8.0.3]:5000", networks)
    assert not peer_allowed("ipv6:[2001:db8::1]:5000", networks)
    assert peer_allowed("ipv4:127.0.0.1:4000", ()) and peer_allowed("ipv6:[::1]:4000", ())
    assert not peer_allowed("ipv4:10.8.0.9:5000", ()) and not peer_allowed("garbage", networks)
    with pytest.raises(AccessError, match="CIDR"):
        parse_networks("10.0.0.0/33")


def instructions(**extra):
    return read_instructions(dumps_as(RemotePolicyConfig("smolvla", "tiny", extra.pop("feats", features()), 10,
                                                         **extra)), 1 << 20)


def test_the_mapping_matches_lerobots_build_dataset_frame():
    helpers = pytest.importorskip("lerobot.datasets.utils")
    feats = features(cameras={"front": (48, 64), "wrist": (24, 32)})
    raw = {f"joint{i}.pos": float(i) * 1.5 - 2 for i in reversed(range(JOINTS))}
    raw.update(front=np.random.default_rng(0).integers(0, 255, (48, 64, 3), np.uint8),
               wrist=np.ones((24, 32, 3), np.uint8), task="stack")
    theirs = helpers.build_dataset_frame(feats, raw, prefix="observation")
    binding = bind(instructions(feats=feats), TINY)
    ours = binding.observation(raw)
    np.testing.assert_array_equal(ours["observation.state"], theirs["observation.state"])
    assert ours["observation.state"].dtype == theirs["observation.state"].dtype
    np.testing.assert_array_equal(ours["observation.images.front"], theirs["observation.images.front"])
    assert ours["task"] == "stack" and "observation.images.wrist" not in ours  # the policy does not take it


def test_feature_errors_name_the_key():
    binding = bind(instructions(), TINY)
    raw = {f"joint{i}.pos": 0.0 for i in range(JOINTS - 1)}
    with pytest.raises(FeatureError, match=r"joint5\.pos"):
        binding.observation(raw)
    with pytest.raises(FeatureError, match=r"policy 'tiny' needs 'observation\.images\.front'"):
        bind(instructions(feats=features(cameras={})), TINY)


def test_the_reply_is_what_lerobots_client_reads():
    actions = np.arange(60, dtype=np.float64).reshape(10, 6)
    payload = encode_actions(actions, first_timestep=5, first_timestamp=100.0, dt=0.1)
    helpers = pytest.importorskip("lerobot.async_inference.helpers")
    timed = pickle.loads(payload)
    assert all(type(item) is helpers.TimedAction for item in timed)
    assert [item.get_timestep() for item in timed] == list(range(5, 15))
    assert timed[2].get_timestamp() == pytest.approx(100.2)
    assert timed[1].get_action().dtype.__str__() == "torch.float32" and timed[1].get_action()[3].item() == 9.0
    assert len(payload) < 64 * 1024  # each action its own storage, not the whole chunk's
    started = time.perf_counter()
    encode_actions(np.zeros((50, 6), np.float32), 0, 0.0, 0.1)
    assert time.perf_counter() - started < 5  # not a speed assertion: a bound against a runaway pickle
    with pytest.raises(ReplyTooLarge, match="actions_per_chunk"):
        encode_actions(np.zeros((2, 600_000), np.float32), 0, 0.0, 0.1)


def test_serve_flags_bind_loopback_unless_networks_are_allowed():
    from openpi_triton.cli import build_parser
    from openpi_triton.cli.options import CliError
    from openpi_triton.cli.serve import _check_lerobot, settings_from_args

    def settings(*args):
        return settings_from_args(build_parser().parse_args(["serve", *args]))

    plain = settings("--lerobot-port", "18080")
    assert (plain.lerobot_port, plain.lerobot_host, plain.lerobot_allow) == (18080, "127.0.0.1", ())
    assert settings().lerobot_port is None  # off unless set
    with pytest.raises(CliError, match="--lerobot-allow"):
        _check_lerobot(settings("--lerobot-port", "18080", "--lerobot-host", "0.0.0.0"))
    with pytest.raises(CliError, match="not a network"):
        _check_lerobot(settings("--lerobot-port", "18080", "--lerobot-host", "0.0.0.0", "--lerobot-allow", "10.0.0/8x"))
    wide = settings("--lerobot-port", "18080", "--lerobot-host", "0.0.0.0", "--lerobot-allow", "10.8.0.0/24, 10.9.0.1")
    assert wide.lerobot_allow == ("10.8.0.0/24", "10.9.0.1")
    _check_lerobot(wide)

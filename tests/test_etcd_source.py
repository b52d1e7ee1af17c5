"""What the etcd session changes in the libraries below it."""

import grpc._common

from logship.etcd_source import AGENT_GRPC_WAIT, wake_grpc_waits_less


def test_the_agents_grpc_waits_wake_once_a_second(monkeypatch):
    """Through gRPC's own wait: an upgrade that renames its slice would silently bring
    back ten wake-ups a second per waiting thread."""
    monkeypatch.setattr(grpc._common, "MAXIMUM_WAIT_TIMEOUT", grpc._common.MAXIMUM_WAIT_TIMEOUT)
    wake_grpc_waits_less()
    slices: list[float] = []
    grpc._common.wait(lambda timeout: slices.append(timeout), lambda: len(slices) == 2)
    assert slices == [AGENT_GRPC_WAIT, AGENT_GRPC_WAIT]

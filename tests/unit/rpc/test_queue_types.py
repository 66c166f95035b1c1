"""Queue types, arguments and names: the same as oslo.messaging's rabbit driver declares.

The expected arguments come from oslo.messaging's own ``_get_queue_arguments``
and its ``Connection.declare_*_consumer`` rules, so a difference that would
make the broker answer 406 "inequivalent arg" fails here.
"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid

import pytest
from oslo_messaging._drivers import impl_rabbit

from rabbit_ha_driver.exceptions import ConfigurationError
from rabbit_ha_driver.options import from_url
from rabbit_ha_driver.rpc import naming, queue_types, topology
from rabbit_ha_driver.rpc.listener import deletes_fanout_queue
from rabbit_ha_driver.rpc.queue_manager import SHM_DIR, QueueManager

LIMITS = {"rabbit_quorum_delivery_limit": 3, "rabbit_quorum_max_memory_length": 100,
          "rabbit_quorum_max_memory_bytes": 4096}


def oslo_arguments(*, ttl: int, quorum: bool, stream: bool = False, **limits: int) -> dict:
    config = impl_rabbit.QuorumMemConfig(limits.get("rabbit_quorum_delivery_limit", 0),
                                         limits.get("rabbit_quorum_max_memory_length", 0),
                                         limits.get("rabbit_quorum_max_memory_bytes", 0))
    return impl_rabbit._get_queue_arguments(False, ttl, quorum, config, stream)


@pytest.mark.parametrize("quorum", [False, True])
@pytest.mark.parametrize("limits", [{}, LIMITS])
def test_topic_queues_match_oslo_messaging(quorum, limits):
    settings = from_url("memory://", rabbit_quorum_queue=quorum, **limits)
    spec = topology.topic_queue(settings, "openstack", "t")
    # oslo.messaging's declare_topic_consumer: no TTL, quorum per rabbit_quorum_queue.
    assert dict(spec.arguments) == oslo_arguments(ttl=0, quorum=quorum, **limits)
    assert spec.durable is quorum


@pytest.mark.parametrize("transient_quorum", [False, True])
@pytest.mark.parametrize("limits", [{}, LIMITS])
def test_reply_and_fanout_queues_match_oslo_messaging(transient_quorum, limits):
    settings = from_url("memory://", rabbit_transient_quorum_queue=transient_quorum,
                        rabbit_transient_queues_ttl=600, **limits)
    expected = oslo_arguments(ttl=600, quorum=transient_quorum, **limits)
    fanout = topology.fanout_queue(settings, "t")
    assert dict(fanout.arguments) == expected
    assert dict(queue_types.transient_queue_arguments(settings)) == expected
    # declare_direct_consumer / declare_fanout_consumer: durable = transient quorum.
    assert fanout.durable is transient_quorum
    assert queue_types.transient_durable(settings) is transient_quorum
    # fanout_send: the exchange is durable with transient quorum queues, always auto-delete.
    assert topology.fanout_exchange(settings, "t") == topology.ExchangeSpec(
        "t_fanout", "fanout", durable=transient_quorum, auto_delete=True)


@pytest.mark.parametrize(("transient_quorum", "stream"),
                         [(False, False), (True, False), (True, True)])
def test_a_transient_queues_ttl_of_0_means_no_expiry_as_in_oslo_messaging(transient_quorum,
                                                                          stream):
    # oslo.messaging accepts 0: reply and fanout queues get no x-expires (a
    # stream no x-max-age). The same arguments here, or the broker refuses
    # the second declaration of a shared queue as inequivalent.
    settings = from_url("memory://", rabbit_transient_queues_ttl=0,
                        rabbit_transient_quorum_queue=transient_quorum,
                        rabbit_stream_fanout=stream)
    expected = oslo_arguments(ttl=0, quorum=transient_quorum, stream=stream)
    assert dict(topology.fanout_queue(settings, "t").arguments) == expected
    assert "x-expires" not in expected and "x-max-age" not in expected
    if not stream:
        assert dict(queue_types.transient_queue_arguments(settings)) == expected


def test_stream_fanout_matches_oslo_messaging():
    settings = from_url("memory://", rabbit_transient_quorum_queue=True, rabbit_stream_fanout=True,
                        **LIMITS)
    spec = topology.fanout_queue(settings, "t")
    assert spec.name == "t_fanout" and spec.exchange == "t_fanout" and spec.durable
    assert dict(spec.arguments) == oslo_arguments(ttl=1800, quorum=True, stream=True, **LIMITS)
    assert dict(spec.arguments) == {"x-queue-type": "stream", "x-max-age": "1800s"}
    assert dict(spec.consumer_arguments) == {"x-stream-offset": "next"}
    # Shared by every server: never deleted by one of them.
    assert not deletes_fanout_queue(settings)


def test_amqp_auto_delete_applies_to_topic_exchanges_and_queues():
    settings = from_url("memory://", amqp_auto_delete=True)
    assert topology.topic_queue(settings, "openstack", "t").auto_delete
    assert topology.topic_exchange(settings, "openstack").auto_delete
    assert not topology.fanout_queue(settings, "t").auto_delete
    assert not topology.topic_queue(from_url("memory://"), "openstack", "t").auto_delete


def test_stream_fanout_needs_transient_quorum_queues_and_a_prefetch_limit():
    with pytest.raises(ConfigurationError, match="rabbit_stream_fanout"):
        from_url("memory://", rabbit_stream_fanout=True)
    with pytest.raises(ConfigurationError, match="rabbit_qos_prefetch_count"):
        from_url("memory://", rabbit_stream_fanout=True, rabbit_transient_quorum_queue=True,
                 rabbit_qos_prefetch_count=0)


def test_queue_manager_names_need_a_host_and_process_name():
    with pytest.raises(ConfigurationError, match="processname"):
        from_url("memory://", use_queue_manager=True, processname="")


def test_stream_offset_resumes_after_the_last_delivery():
    assert queue_types.stream_offset_after({"x-stream-offset": 41}) == 42
    assert queue_types.stream_offset_after({}) is None
    assert queue_types.stream_offset_after(None) is None
    assert queue_types.stream_offset_after({"x-stream-offset": True}) is None


def test_queue_manager_counts_within_a_run_and_names_like_oslo(tmp_path):
    manager = QueueManager("node1", "nova-api", directory=tmp_path)
    assert [manager.get() for _ in range(3)] == [
        "node1:nova-api:1", "node1:nova-api:2", "node1:nova-api:3"]
    # Same file, same format as oslo.messaging's QManager: <pgid>:<count>:<start>.
    group, count, _start = (tmp_path / "node1_nova-api_qmanager").read_text().split(":")
    assert (int(group), int(count)) == (os.getpgrp(), 3)


def test_queue_manager_starts_again_at_1_in_a_new_run(tmp_path):
    manager = QueueManager("node1", "svc", directory=tmp_path)
    manager.get()
    manager.get()
    # A restarted service is a new process group (a new session here).
    code = ("import sys; from pathlib import Path; "
            "from rabbit_ha_driver.rpc.queue_manager import SHM_DIR, QueueManager; "
            "print(QueueManager('node1', 'svc', directory=Path(sys.argv[1])).get())")
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True,
                         text=True, check=True, start_new_session=True).stdout.strip()
    assert out == "node1:svc:1"


def test_queue_manager_names_reply_and_fanout_queues():
    process = f"rha-unit-{uuid.uuid4().hex[:8]}"
    settings = from_url("memory://", use_queue_manager=True, hostname="h", processname=process)
    try:
        assert naming.reply_queue_name(settings) == f"reply_h:{process}:1"
        assert topology.fanout_queue(settings, "t").name == f"t_fanout_h:{process}:2"
    finally:
        (SHM_DIR / f"h_{process}_qmanager").unlink(missing_ok=True)
    assert not queue_types.deletes_own_queues(settings)
    assert not deletes_fanout_queue(settings)
    assert deletes_fanout_queue(from_url("memory://"))

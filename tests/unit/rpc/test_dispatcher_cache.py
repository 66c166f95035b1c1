"""The dispatcher finds a method and its signature once per (namespace, version, method)."""

from __future__ import annotations

import inspect
from types import SimpleNamespace

import pytest

from rabbit_ha_driver.rpc import envelope
from rabbit_ha_driver.rpc.server import Dispatcher, InvalidArguments, NoSuchMethod


def request(method, namespace=None, version=None, **args):
    return envelope.Request(method=method, args=args, context={"user": "u"},
                            namespace=namespace, version=version)


class CountingEndpoint:
    """An endpoint that counts how often the dispatcher looks at its target."""

    def __init__(self, namespace=None, version="1.3"):
        self._target = SimpleNamespace(namespace=namespace, version=version)
        self.target_reads = 0

    @property
    def target(self):
        self.target_reads += 1
        return self._target

    def echo(self, ctxt, value):
        return value

    def other(self, ctxt):
        return "other"


@pytest.fixture
def signatures(monkeypatch):
    """Every object inspect.signature is asked about, while the test runs."""
    asked = []
    real = inspect.signature

    def counting(obj, *args, **kwargs):
        asked.append(obj)
        return real(obj, *args, **kwargs)

    monkeypatch.setattr(inspect, "signature", counting)
    return asked


def test_a_method_is_looked_up_once(signatures):
    endpoint = CountingEndpoint()
    dispatcher = Dispatcher([endpoint])
    assert dispatcher.dispatch(request("echo", value=1)) == 1
    reads_after_first = endpoint.target_reads
    assert reads_after_first >= 1
    for value in (2, 3):
        assert dispatcher.dispatch(request("echo", value=value)) == value
    assert endpoint.target_reads == reads_after_first
    assert signatures == [endpoint.echo]


def test_no_version_and_version_one_oh_share_one_lookup():
    endpoint = CountingEndpoint(version="1.0")
    dispatcher = Dispatcher([endpoint])
    dispatcher.dispatch(request("other"))
    reads = endpoint.target_reads
    dispatcher.dispatch(request("other", version="1.0"))
    assert endpoint.target_reads == reads


def test_each_namespace_version_and_method_is_looked_up_on_its_own(signatures):
    endpoint = CountingEndpoint(version="1.3")
    dispatcher = Dispatcher([endpoint])
    seen = []
    for req in (request("echo", value=1), request("echo", version="1.2", value=1),
                request("other"), request("echo", value=2), request("other")):
        dispatcher.dispatch(req)
        seen.append(endpoint.target_reads)
    assert seen[0] < seen[1] < seen[2]  # three keys, three lookups
    assert seen[4] == seen[3] == seen[2]  # then none
    assert signatures == [endpoint.echo, endpoint.other]  # one per method


def test_lookups_in_different_namespaces_find_different_endpoints():
    class Admin(CountingEndpoint):
        def echo(self, ctxt, value):
            return f"admin {value}"

    dispatcher = Dispatcher([CountingEndpoint(), Admin(namespace="admin")])
    for _ in range(2):
        assert dispatcher.dispatch(request("echo", value=1)) == 1
        assert dispatcher.dispatch(request("echo", namespace="admin", value=1)) == "admin 1"


def test_wrong_arguments_are_refused_every_time(signatures):
    endpoint = CountingEndpoint()
    dispatcher = Dispatcher([endpoint])
    assert dispatcher.dispatch(request("echo", value=1)) == 1
    for _ in range(2):
        with pytest.raises(InvalidArguments, match="missing a required argument: 'value'"):
            dispatcher.dispatch(request("echo"))
        with pytest.raises(InvalidArguments, match="unexpected keyword"):
            dispatcher.dispatch(request("echo", value=1, colour="red"))
    assert signatures == [endpoint.echo]


def test_wrong_arguments_on_the_first_dispatch_are_refused_on_the_next_too(signatures):
    dispatcher = Dispatcher([CountingEndpoint()])
    for _ in range(2):
        with pytest.raises(InvalidArguments):
            dispatcher.dispatch(request("echo", wrong=1))
    assert len(signatures) == 1
    assert dispatcher.dispatch(request("echo", value="fine")) == "fine"


def test_an_unknown_method_is_refused_every_time():
    endpoint = CountingEndpoint()
    dispatcher = Dispatcher([endpoint])
    for _ in range(2):
        with pytest.raises(NoSuchMethod):
            dispatcher.dispatch(request("missing"))


def test_a_method_without_a_signature_is_asked_once_and_called_unchecked(monkeypatch):
    endpoint = CountingEndpoint()
    asked = []

    def no_signature(obj, *args, **kwargs):
        asked.append(obj)
        raise ValueError("no signature found")

    monkeypatch.setattr(inspect, "signature", no_signature)
    dispatcher = Dispatcher([endpoint])
    for value in (1, 2):
        assert dispatcher.dispatch(request("echo", value=value)) == value
    # Unchecked: the method's own TypeError, not InvalidArguments.
    with pytest.raises(TypeError) as info:
        dispatcher.dispatch(request("echo"))
    assert not isinstance(info.value, InvalidArguments)
    assert asked == [endpoint.echo]


def test_endpoints_that_cannot_be_hashed_are_dispatched_to():
    class Unhashable(CountingEndpoint):
        __hash__ = None

        def __eq__(self, other):
            return True

    first, second = Unhashable(namespace="a"), Unhashable(namespace="b")
    dispatcher = Dispatcher([first, second])
    for _ in range(2):
        assert dispatcher.dispatch(request("echo", namespace="a", value="a")) == "a"
        assert dispatcher.dispatch(request("echo", namespace="b", value="b")) == "b"

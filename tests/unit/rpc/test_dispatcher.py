"""Dispatch to endpoints: public methods only, namespaces and versions, argument checks."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from rabbit_ha_driver.rpc import envelope
from rabbit_ha_driver.rpc.server import (
    Dispatcher,
    InvalidArguments,
    NoSuchMethod,
    UnsupportedVersion,
)


def request(method, namespace=None, version=None, **args):
    return envelope.Request(method=method, args=args, context={"user": "u"},
                            namespace=namespace, version=version)


class Endpoint:
    touched = False

    def echo(self, ctxt, value, upper=False):
        return (ctxt["user"], value.upper() if upper else value)

    def explode(self, ctxt):
        raise TypeError("raised inside the method")

    @staticmethod
    def static(ctxt):
        return "static"

    @classmethod
    def klass(cls, ctxt):
        return "class"

    def _private(self, ctxt):
        return "private"

    @property
    def prop(self):
        Endpoint.touched = True
        return lambda ctxt: "from a property"

    nested = dict


def test_public_methods_are_called_with_the_context_and_arguments():
    dispatcher = Dispatcher([Endpoint()])
    assert dispatcher.dispatch(request("echo", value="x", upper=True)) == ("u", "X")
    assert dispatcher.dispatch(request("static")) == "static"
    assert dispatcher.dispatch(request("klass")) == "class"


@pytest.mark.parametrize("name", ["_private", "__init__", "__class__", "__dict__", "prop",
                                  "nested", "touched", "target", "no_such", "echo.x", "1a"])
def test_private_and_non_method_attributes_are_never_dispatched(name):
    Endpoint.touched = False
    with pytest.raises(NoSuchMethod) as info:
        Dispatcher([Endpoint()]).dispatch(request(name))
    assert info.value.method == name
    assert not Endpoint.touched  # the property was not even evaluated


def test_wrong_arguments_are_reported_as_such():
    dispatcher = Dispatcher([Endpoint()])
    with pytest.raises(InvalidArguments, match="missing a required argument: 'value'"):
        dispatcher.dispatch(request("echo"))
    with pytest.raises(InvalidArguments, match="unexpected keyword"):
        dispatcher.dispatch(request("echo", value=1, colour="red"))
    with pytest.raises(TypeError, match="raised inside the method") as info:
        dispatcher.dispatch(request("explode"))
    assert not isinstance(info.value, InvalidArguments)


def test_first_endpoint_with_the_method_wins():
    class Other:
        def echo(self, ctxt, value, upper=False):
            return "other"

        def only_here(self, ctxt):
            return "here"

    dispatcher = Dispatcher([Endpoint(), Other()])
    assert dispatcher.dispatch(request("echo", value=1)) == ("u", 1)
    assert dispatcher.dispatch(request("only_here")) == "here"


def test_namespaces_and_versions_follow_oslo_messaging():
    class V12:
        target = SimpleNamespace(namespace="ns", version="1.2")

        def m(self, ctxt):
            return "1.2"

    class V2:
        target = SimpleNamespace(namespace=None, version="2.0", accepted_namespaces=[None, "x"])

        def m(self, ctxt):
            return "2.0"

    dispatcher = Dispatcher([V12(), V2()])
    assert dispatcher.dispatch(request("m", namespace="ns", version="1.1")) == "1.2"
    assert dispatcher.dispatch(request("m", namespace="ns", version="1.2")) == "1.2"
    assert dispatcher.dispatch(request("m", version="2.0")) == "2.0"
    assert dispatcher.dispatch(request("m", namespace="x", version="2")) == "2.0"
    with pytest.raises(UnsupportedVersion, match=r"version 1\.3 in namespace ns"):
        dispatcher.dispatch(request("m", namespace="ns", version="1.3"))
    with pytest.raises(UnsupportedVersion):
        dispatcher.dispatch(request("m", version="1.0"))
    with pytest.raises(UnsupportedVersion):
        dispatcher.dispatch(request("m", namespace="ns", version="garbage"))
    with pytest.raises(NoSuchMethod):
        dispatcher.dispatch(request("other", namespace="ns", version="1.0"))


def test_endpoints_without_target_implement_version_1_0():
    dispatcher = Dispatcher([Endpoint()])
    assert dispatcher.dispatch(request("static", version="1.0")) == "static"
    for newer in ("1.1", "2.0"):
        with pytest.raises(UnsupportedVersion):
            dispatcher.dispatch(request("static", version=newer))


def test_a_server_needs_endpoints():
    with pytest.raises(ValueError):
        Dispatcher([])

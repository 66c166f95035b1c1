"""Dispatching a request to an endpoint method.

How this works. :class:`Dispatcher` calls ``endpoint.<method>(ctxt, **args)``
on the first endpoint that has a public method of that name and accepts the
request's namespace and version (from an optional ``target`` attribute, as
oslo.messaging's endpoints have; :func:`version_ok` is oslo.messaging's rule).
Names starting with ``_`` are never dispatched, nor attributes that are not
plain methods (properties, classes, data). Arguments are checked against the
method's signature before the call, so wrong arguments are reported as such
(:class:`~rabbit_ha_driver.exceptions.InvalidArguments`) and not as an error of
the method. What a request resolves to is found once: endpoints are fixed
when the server starts.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from typing import Any

from rabbit_ha_driver.exceptions import InvalidArguments, NoSuchMethod, UnsupportedVersion
from rabbit_ha_driver.rpc import envelope


def version_ok(implemented: str | None, requested: str) -> bool:
    """oslo.messaging's rule: same major, requested minor.rev not newer."""
    if implemented is None:
        implemented = "1.0"
    try:
        want = [int(p) for p in requested.split(".")] + [0, 0]
        have = [int(p) for p in implemented.split(".")] + [0, 0]
    except ValueError:
        return False
    return want[0] == have[0] and (want[1], want[2]) <= (have[1], have[2])


class Dispatcher:
    """Finds and calls the endpoint method a request names."""

    def __init__(self, endpoints: Sequence[object]) -> None:
        if not endpoints:
            raise ValueError("an RPC server needs at least one endpoint")
        self.endpoints = list(endpoints)
        # What a (namespace, version, method) resolves to and each method's
        # signature, found once: endpoints are fixed when the server starts.
        self._found: dict[tuple[str | None, str, str], Callable[..., Any]] = {}
        self._signatures: dict[Callable[..., Any], inspect.Signature | None] = {}

    @staticmethod
    def _target(endpoint: object) -> tuple[list[str | None], str | None]:
        target = getattr(endpoint, "target", None)
        if target is None:
            return [None], None
        namespaces = getattr(target, "accepted_namespaces", None)
        if namespaces is None:
            namespaces = [getattr(target, "namespace", None)]
        return list(namespaces), getattr(target, "version", None)

    @staticmethod
    def _method(endpoint: object, name: str) -> Callable[..., Any] | None:
        """The bound method ``name`` if it is public and a plain method."""
        if not name.isidentifier() or name.startswith("_") or name == "target":
            return None
        static = inspect.getattr_static(endpoint, name, None)
        if isinstance(static, staticmethod | classmethod):
            static = static.__func__
        if not (inspect.isfunction(static) or inspect.ismethoddescriptor(static)
                or inspect.isbuiltin(static)):
            return None
        method = getattr(endpoint, name)
        return method if callable(method) else None

    def lookup(self, request: envelope.Request) -> Callable[..., Any]:
        """The method to call; raises NoSuchMethod or UnsupportedVersion."""
        version = request.version or "1.0"
        key = (request.namespace, version, request.method)
        found = self._found.get(key)
        if found is None:
            found = self._found[key] = self._lookup(request, version)
        return found

    def _lookup(self, request: envelope.Request, version: str) -> Callable[..., Any]:
        compatible = False
        for endpoint in self.endpoints:
            namespaces, implemented = self._target(endpoint)
            if request.namespace not in namespaces or not version_ok(implemented, version):
                continue
            compatible = True
            method = self._method(endpoint, request.method)
            if method is not None:
                return method
        if compatible:
            raise NoSuchMethod(request.method)
        raise UnsupportedVersion(version, request.method, request.namespace)

    def dispatch(self, request: envelope.Request) -> Any:
        """Call the method with ``(ctxt, **args)``; its errors propagate."""
        method = self.lookup(request)
        try:
            signature = self._signatures[method]
        except KeyError:
            try:
                signature = inspect.signature(method)
            except (TypeError, ValueError):
                signature = None
            self._signatures[method] = signature
        if signature is not None:
            try:
                signature.bind(request.context, **request.args)
            except TypeError as error:
                raise InvalidArguments(request.method, str(error)) from None
        return method(request.context, **request.args)

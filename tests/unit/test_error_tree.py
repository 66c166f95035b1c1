"""One error tree: every error a caller can receive is defined in
:mod:`rabbit_ha_driver.exceptions`, exported, and rooted at RabbitHAError.

The second test reads the package's source: every ``raise X(...)`` whose ``X``
is a class of the package must name a class of ``exceptions.py``, unless it is
an internal error listed in :data:`INTERNAL` with the reason it never reaches
a caller.
"""

from __future__ import annotations

import ast
import inspect
import json
import pathlib

import pytest

import rabbit_ha_driver
from rabbit_ha_driver import exceptions
from rabbit_ha_driver.rpc import envelope

PACKAGE = pathlib.Path(rabbit_ha_driver.__file__).resolve().parent

#: Errors raised inside the package that never reach a caller, and why.
INTERNAL = {
    "RequestTimeout": "raised by the deadline connection (connection/_transport.py) inside "
                      "ensure(); connection/_errors.py translates it into ChannelDead",
    "WriteTimeout": "an OSError raised by the bounded write inside ensure() and the publish "
                    "path; connection/_errors.py translates it into ConnectionLost",
    "_Dropped": "the scripted test broker's own signal that a client hung up "
                "(testing/_amqp_session.py); it ends that connection's server thread",
}


def error_classes() -> dict[str, type[BaseException]]:
    return {name: obj for name, obj in vars(exceptions).items()
            if inspect.isclass(obj) and issubclass(obj, BaseException)
            and obj.__module__ == exceptions.__name__}


def test_every_error_class_is_exported_rooted_and_documented():
    classes = error_classes()
    assert len(classes) > 15
    for name, cls in classes.items():
        assert name in rabbit_ha_driver.__all__, name
        assert getattr(rabbit_ha_driver, name) is cls, name
        assert issubclass(cls, exceptions.RabbitHAError), name
        assert (cls.__dict__.get("__doc__") or "").strip(), f"{name} has no docstring"


# -- which classes the package raises --------------------------------------------------------

def _module_name(path: pathlib.Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES = {_module_name(p): ast.parse(p.read_text(), str(p)) for p in sorted(PACKAGE.rglob("*.py"))}


def _top_level_classes(tree: ast.Module) -> set[str]:
    return {node.name for node in tree.body if isinstance(node, ast.ClassDef)}


def _all_classes(tree: ast.Module) -> set[str]:
    return {node.name for node in ast.walk(tree) if isinstance(node, ast.ClassDef)}


def _imports(module: str, tree: ast.Module) -> dict[str, tuple[str, str | None]]:
    """Local name -> (module, name in it) or (module, None) for an imported module."""
    package = module if module in MODULES and _is_package(module) else module.rpartition(".")[0]
    names: dict[str, tuple[str, str | None]] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.asname:
                    names[alias.asname] = (alias.name, None)
                else:
                    top = alias.name.partition(".")[0]
                    names[top] = (top, None)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[:len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            for alias in node.names:
                local = alias.asname or alias.name
                sub = f"{base}.{alias.name}"
                names[local] = (sub, None) if sub in MODULES else (base, alias.name)
    return names


def _is_package(module: str) -> bool:
    return (PACKAGE.parent / module.replace(".", "/") / "__init__.py").exists()


IMPORTS = {name: _imports(name, tree) for name, tree in MODULES.items()}


def _resolve(module: str, name: str, depth: int = 0) -> tuple[str, str] | None:
    """Where the class ``name`` seen in ``module`` is defined; None outside the package."""
    if depth > 10 or module not in MODULES:
        return None
    if name in _top_level_classes(MODULES[module]):
        return (module, name)
    imported = IMPORTS[module].get(name)
    if imported is not None and imported[1] is not None:
        return _resolve(imported[0], imported[1], depth + 1)
    if name in _all_classes(MODULES[module]):
        return (module, name)  # a class defined inside a function
    return None


def raised_package_classes() -> dict[tuple[str, str], list[str]]:
    """(defining module, class) -> the raise sites (module:line) of package classes."""
    found: dict[tuple[str, str], list[str]] = {}
    for module, tree in MODULES.items():
        for node in ast.walk(tree):
            if not isinstance(node, ast.Raise) or node.exc is None:
                continue
            target = node.exc.func if isinstance(node.exc, ast.Call) else node.exc
            where: tuple[str, str] | None = None
            if isinstance(target, ast.Name):
                where = _resolve(module, target.id)
            elif isinstance(target, ast.Attribute) and isinstance(target.value, ast.Name):
                imported = IMPORTS[module].get(target.value.id)
                if imported is not None and imported[1] is None:
                    where = _resolve(imported[0], target.attr)
            if where is not None:
                found.setdefault(where, []).append(f"{module}:{node.lineno}")
    return found


def test_the_walk_sees_the_raise_sites_it_must_judge():
    raised = raised_package_classes()
    # Spot checks, through each way of naming a class: ``exc.X``, an imported
    # name, and a package-internal class of another module.
    assert ("rabbit_ha_driver.exceptions", "ConnectionLost") in raised
    assert ("rabbit_ha_driver.exceptions", "NoSuchMethod") in raised
    assert ("rabbit_ha_driver.exceptions", "ClientClosed") in raised
    assert ("rabbit_ha_driver.exceptions", "BadRequest") in raised
    assert ("rabbit_ha_driver.connection._errors", "RequestTimeout") in raised


def test_every_error_the_package_raises_is_defined_in_exceptions():
    stray = {f"{module}.{name}": sites for (module, name), sites in raised_package_classes().items()
             if module != exceptions.__name__ and name not in INTERNAL}
    assert stray == {}, "define these in rabbit_ha_driver/exceptions.py (or list them in INTERNAL)"


def test_internal_errors_are_not_part_of_the_tree():
    for name in INTERNAL:
        assert name not in rabbit_ha_driver.__all__
        assert not hasattr(exceptions, name)


# -- compatibility of the classes that moved ----------------------------------------------------

@pytest.mark.parametrize(("name", "builtin"), [
    ("NoSuchMethod", AttributeError),
    ("InvalidArguments", TypeError),
    ("ConfigurationError", ValueError),
    ("MessagingTimeout", TimeoutError),
])
def test_builtin_bases_are_kept(name, builtin):
    assert issubclass(getattr(rabbit_ha_driver, name), builtin)


def test_the_moved_classes_keep_their_bases_and_old_homes():
    from rabbit_ha_driver import rpc
    from rabbit_ha_driver.rpc import replies, server

    assert issubclass(exceptions.BadRequest, exceptions.InvalidMessage)
    for name in ("NoSuchMethod", "UnsupportedVersion", "InvalidArguments"):
        cls = getattr(exceptions, name)
        assert issubclass(cls, exceptions.DispatchError)
        # The wire names this module; oslo.messaging's allowed_remote_exmods looks there.
        assert getattr(server, name) is cls
        assert getattr(rpc, name) is cls
    assert envelope.BadRequest is exceptions.BadRequest
    assert replies.ClientClosed is rpc.ClientClosed is exceptions.ClientClosed


def test_receipt_is_public():
    from rabbit_ha_driver.rpc import client

    assert rabbit_ha_driver.Receipt is client.Receipt


@pytest.mark.parametrize(("error", "module"), [
    (exceptions.NoSuchMethod("m"), "rabbit_ha_driver.rpc.server"),
    (exceptions.UnsupportedVersion("9.0", "m"), "rabbit_ha_driver.rpc.server"),
    (exceptions.InvalidArguments("m", "missing 'x'"), "rabbit_ha_driver.rpc.server"),
    (exceptions.BadRequest("no method"), "rabbit_ha_driver.rpc.envelope"),
    (exceptions.InvalidMessage("too large"), "rabbit_ha_driver.exceptions"),
])
def test_the_wire_names_of_moved_errors_are_unchanged(error, module):
    failure = envelope.encode_failure(error)
    assert json.loads(failure)["module"] == module
    remote = envelope.decode_failure(failure)
    assert remote.exc_type == f"{module}.{type(error).__name__}"

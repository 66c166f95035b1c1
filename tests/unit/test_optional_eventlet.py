"""eventlet is an optional extra: the library imports and works without it.

Each check runs in a fresh interpreter in which eventlet cannot be found (a
meta path finder refuses it, as a missing package is refused), so nothing
the test process imported earlier hides an import.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

BLOCK_EVENTLET = textwrap.dedent("""
    import sys

    class NoEventlet:
        def find_spec(self, name, path=None, target=None):
            if name == "eventlet" or name.startswith("eventlet."):
                raise ModuleNotFoundError(f"No module named {name!r}", name=name)
            return None

    sys.meta_path.insert(0, NoEventlet())
""")


def run_without_eventlet(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", BLOCK_EVENTLET + textwrap.dedent(code)],
                          capture_output=True, text=True, timeout=120)


def test_importing_the_library_imports_no_eventlet():
    result = subprocess.run([sys.executable, "-X", "importtime", "-c", "import rabbit_ha_driver"],
                            capture_output=True, text=True, check=True)
    imported = [line.rsplit("|", 1)[-1].strip() for line in result.stderr.splitlines()]
    assert "rabbit_ha_driver" in imported
    assert not [name for name in imported if name.split(".")[0] == "eventlet"]


def test_the_demo_runs_without_eventlet():
    result = run_without_eventlet("""
        from rabbit_ha_driver import cli
        code = cli.main(["demo", "--timeout", "5"])
        print("eventlet imported:", "eventlet" in sys.modules)
        sys.exit(code)
    """)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "demo finished: call, cast, fanout and notify all work" in result.stdout
    assert "eventlet imported: False" in result.stdout


def test_choosing_eventlet_without_it_is_a_clear_error():
    result = run_without_eventlet("""
        from rabbit_ha_driver import ConfigurationError, from_url
        from rabbit_ha_driver.rpc.executors import make_executor
        for attempt in (lambda: from_url("memory://", heartbeat_runner="green"),
                        lambda: make_executor("eventlet")):
            try:
                attempt()
            except ConfigurationError as error:
                print(error)
        print(from_url("memory://", heartbeat_runner="native").heartbeat_runner,
              make_executor("threading").name)
    """)
    assert result.returncode == 0, result.stderr[-2000:]
    lines = result.stdout.splitlines()
    assert lines[0].startswith("invalid value 'green' for option [rabbit_ha] heartbeat_runner: "
                               "needs eventlet, which is not installed: pip install "
                               "'rabbit_ha_driver[eventlet]'")
    assert lines[1].startswith("invalid value 'eventlet' for option executor: needs eventlet")
    assert lines[2] == "native threading"


def test_with_eventlet_installed_both_are_available():
    from rabbit_ha_driver import from_url
    from rabbit_ha_driver.rpc.executors import make_executor

    assert from_url("memory://", heartbeat_runner="green").heartbeat_runner == "green"
    executor = make_executor("eventlet")
    assert executor.name == "eventlet"

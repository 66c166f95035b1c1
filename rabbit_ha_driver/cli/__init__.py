"""The ``rabbit-ha`` command.

How this works: :func:`main` builds one argparse parser with a subcommand per
entry of :data:`COMMANDS`, one module each: ``demo``
(:mod:`~rabbit_ha_driver.cli.demo`), ``check``
(:mod:`~rabbit_ha_driver.cli.check`), ``drill``
(:mod:`~rabbit_ha_driver.cli.drill`) and ``bench``
(:mod:`~rabbit_ha_driver.cli.measure`, the front of the benchmark that lives in
the source checkout, and with ``--scale`` of its cost-at-scale bench; no file
of the wheel is named after the benchmark). Each
module's ``add_parser`` adds its subcommand and sets ``run(args) -> exit
status``.

``demo``, ``check`` and ``drill`` share the oslo.config-style options
(``--config-file``, ``--config-dir``) and ``--url`` (``_common``): the files
are read by oslo.config, the ``[rabbit_ha]`` group becomes frozen
:class:`~rabbit_ha_driver.settings.Settings`, and ``--url`` (when given)
replaces ``[rabbit_ha] transport_url``. A bad option stops the command with
exit status 2 and a message naming the option. ``bench`` takes ``--url`` but
no configuration file.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Sequence
from typing import Any

from rabbit_ha_driver import exceptions as exc
from rabbit_ha_driver.cli import check, demo, drill, measure
from rabbit_ha_driver.cli._common import PROG, common_options, load_settings

__all__ = ["build_parser", "load_settings", "main"]

#: Subcommands: each adds its parser (demo, check and drill with the shared
#: options as a parent) and sets ``run(args) -> exit status``.
COMMANDS: list[Callable[[Any, argparse.ArgumentParser], None]] = [
    demo.add_parser, check.add_parser, drill.add_parser, measure.add_parser]


def build_parser() -> argparse.ArgumentParser:
    """The parser of ``rabbit-ha`` and its subcommands."""
    common = common_options()
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Tools for rabbit_ha_driver, a RabbitMQ RPC transport. demo, "
        "check and drill read their configuration like other oslo.config programs: "
        "--config-file/--config-dir files with a [rabbit_ha] section, and --url "
        "for the transport URL. bench takes --url only.")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for add in COMMANDS:
        add(subparsers, common)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``rabbit-ha``; returns the exit status."""
    args = build_parser().parse_args(argv)
    if args.verbose:
        logging.basicConfig(level=logging.DEBUG if args.verbose > 1 else logging.INFO,
                            format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                            stream=sys.stderr)
    else:
        logging.basicConfig(level=logging.CRITICAL, stream=sys.stderr)
    try:
        status: int = args.run(args)
    except exc.ConfigurationError as error:
        print(f"{PROG}: {error}", file=sys.stderr)
        return 2
    return status

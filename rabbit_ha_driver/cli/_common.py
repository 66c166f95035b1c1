"""What the subcommands of ``rabbit-ha`` share: the configuration options and argparse types.

``demo``, ``check`` and ``drill`` take the oslo.config-style options
(``--config-file``, ``--config-dir``) and ``--url`` from
:func:`common_options`; :func:`load_settings` reads the files with
oslo.config, turns the ``[rabbit_ha]`` group into frozen
:class:`~rabbit_ha_driver.settings.Settings`, and lets ``--url`` (when given)
replace ``[rabbit_ha] transport_url``.
"""

from __future__ import annotations

import argparse

from oslo_config import cfg

from rabbit_ha_driver import exceptions as exc
from rabbit_ha_driver.options import from_conf
from rabbit_ha_driver.settings import Settings

PROG = "rabbit-ha"


def common_options() -> argparse.ArgumentParser:
    """The parent parser of ``demo``, ``check`` and ``drill``."""
    common = argparse.ArgumentParser(add_help=False)
    group = common.add_argument_group("configuration (as in other oslo.config programs)")
    group.add_argument(
        "--config-file", action="append", default=[], metavar="PATH",
        help="an oslo.config file whose [rabbit_ha] section configures the "
        "library (transport_url, heartbeat_timeout_threshold, ...). May be "
        "repeated; later files override earlier ones.")
    group.add_argument(
        "--config-dir", action="append", default=[], metavar="DIR",
        help="a directory of *.conf files, read in alphabetical order after "
        "the --config-file files. May be repeated.")
    group.add_argument(
        "--url", metavar="URL",
        help="transport URL, e.g. rabbit://user:pass@host1:5672,user:pass@host2:5672/ "
        "(overrides [rabbit_ha] transport_url; default memory://, kombu's "
        "in-process transport)")
    common.add_argument("-v", "--verbose", action="count", default=0,
                        help="log the library's activity to stderr (-vv: debug)")
    return common


def load_settings(args: argparse.Namespace) -> Settings:
    """Settings from the configuration files and ``--url``."""
    conf = cfg.ConfigOpts()
    cli: list[str] = []
    for path in args.config_file:
        cli += ["--config-file", path]
    for path in args.config_dir:
        cli += ["--config-dir", path]
    try:
        conf(args=cli, project="rabbit_ha_driver", prog=PROG, default_config_files=[],
             default_config_dirs=[], use_env=False)
    except cfg.Error as error:
        raise exc.ConfigurationError("--config-file", " ".join(cli), str(error)) from error
    return from_conf(conf, url=args.url)


def seconds(value: str) -> float:
    """argparse type: a positive number of seconds."""
    try:
        number = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a number of seconds") from None
    if not number > 0 or number == float("inf"):
        raise argparse.ArgumentTypeError(f"{value!r} must be a positive number of seconds")
    return number


def ms(seconds: float) -> str:
    """Seconds as milliseconds, for output."""
    return f"{seconds * 1000:.1f} ms"

"""Write the fate table of the ``[oslo_messaging_rabbit]`` options into the docs.

Usage: ``python tools/gen_option_fates.py [output]`` (default:
``docs/generated/oslo_option_fates.rst``). The table comes from
:data:`rabbit_ha_driver.oslo.upstream.FATES` and oslo.messaging's installed
option list; a unit test fails when the committed file is out of date.
"""

from __future__ import annotations

import pathlib
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from rabbit_ha_driver.oslo import upstream  # noqa: E402


def main(argv: list[str]) -> int:
    out = pathlib.Path(argv[1]) if len(argv) > 1 else ROOT / "docs" / "generated" / "oslo_option_fates.rst"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(upstream.fate_table_rst())
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))

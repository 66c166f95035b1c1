"""``python -m rabbit_ha_driver.cli``: the ``rabbit-ha`` command."""

import sys

from rabbit_ha_driver.cli import main

sys.exit(main())

"""`python -m mmcore`: see mmcore.cli."""

import sys

from mmcore.cli import main

sys.exit(main())

"""`python -m mmcore`: see mmcore.commands."""

import sys

from mmcore.commands import main

sys.exit(main())

"""``python -m fastuvit ...`` (and ``torchrun ... -m fastuvit train ...``): the ``fastuvit`` command."""
import sys

from .cli import main

sys.exit(main())

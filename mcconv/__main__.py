"""``python -m mcconv demo``: same as the ``mcconv`` console script."""
import sys

from .tools.cli import main

sys.exit(main())

"""``python -m trainer``: the searchr3-train command."""
import sys

from trainer.cli import main

sys.exit(main())

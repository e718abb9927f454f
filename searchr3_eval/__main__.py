"""``python -m searchr3_eval``: the searchr3-eval command."""
import sys

from searchr3_eval.cli import main

sys.exit(main())

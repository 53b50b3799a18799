"""``python -m gates.tiny OUT_DIR [--seed S] [--pretrain-steps N]``: build the tiny project
(:func:`gates.tiny.build_tiny_project`) and print the JSON of its paths."""

import sys

from gates.tiny.build import main

sys.exit(main())

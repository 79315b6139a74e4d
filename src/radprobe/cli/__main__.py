"""``python -m radprobe.cli``: the same as ``radprobe``."""

import sys

from radprobe.cli import main

sys.exit(main())

"""``python -m radprobe``: the command line, as launchers such as ``torchrun -m radprobe`` call it."""

import sys

from radprobe.cli import main

if __name__ == "__main__":
    sys.exit(main())

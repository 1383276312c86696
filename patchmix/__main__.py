"""``python -m patchmix ...`` (and ``torchrun -m patchmix ...``): the same CLI as the ``patchmix`` script."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())

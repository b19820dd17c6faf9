"""`python -m tinygpt.evaluate`: the command's code is tinygpt.training.evaluate."""

import sys

from tinygpt.training.evaluate import main

if __name__ == "__main__":
    sys.exit(main())

"""`python -m tinygpt.generate`: the command's code is tinygpt.serving.generate."""

import sys

from tinygpt.serving.generate import main

if __name__ == "__main__":
    sys.exit(main())

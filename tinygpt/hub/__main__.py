"""`python -m tinygpt.hub`: the command's code is tinygpt.hub.models."""

import sys

from tinygpt.hub.models import main

if __name__ == "__main__":
    sys.exit(main())

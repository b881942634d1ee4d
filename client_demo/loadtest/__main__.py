"""python -m client_demo.loadtest: see `client_demo.loadtest`."""

import sys

from client_demo.loadtest import main

if __name__ == "__main__":
    sys.exit(main())

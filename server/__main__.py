"""`python -m server MODEL ...` runs the same thing as `nanovllm serve MODEL ...`."""

import sys

from server.cli import main

sys.exit(main())

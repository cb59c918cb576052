"""`python -m nanovllm.server MODEL ...` runs the same thing as `nanovllm serve MODEL ...`."""

import sys

from nanovllm.server.cli import main

sys.exit(main())

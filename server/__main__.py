"""`python -m nanovllm.server MODEL ...` runs the same thing as `nanovllm serve MODEL ...`,
one-line errors included (an entry point, like nanovllm.cli: it may import the command line)."""

import sys

from nanovllm.cli import main

sys.exit(main(["serve", *sys.argv[1:]]))

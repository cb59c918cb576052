"""`python -m nanovllm.engine_core FD`: an engine process, spoken to over the socket FD (proc.py).

An entry point: the thread pools are configured before anything loads numpy."""

import sys

from nanovllm.model.platform.threads import configure_thread_pools

configure_thread_pools()

# isort: split
from nanovllm.engine_core.proc import main  # noqa: E402

sys.exit(main(int(sys.argv[1])))

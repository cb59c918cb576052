"""The prefix cache's disk tier (--prefix-cache-dir): KV blocks that outlive the process."""

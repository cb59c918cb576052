"""Helpers shared by the Ray tests (imported as `ray_helpers`; tests/ray/conftest.py puts
tests/server, whose `server_helpers` this uses, on the path)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from server_helpers import MODEL, LiveServer, free_port, serve

LONG_CONTEXT = 1024  # room for a request that runs for seconds (the kill test needs one)
# Room for a request that outlives any test's look at it: decoding 7,000 tokens takes the
# tiny model tens of seconds on an idle machine, minutes on a loaded one.
ENDLESS_CONTEXT = 8192


@dataclass
class RayDeployment:
    live: LiveServer
    client: object  # RayEngineClient
    handle: object  # the engine deployment's DeploymentHandle
    session_dir: str
    proxy_port: int | None  # Ray Serve's own HTTP proxy, if started

    def stop(self) -> None:
        self.live.stop()
        self.client.shutdown()


def start_deployment(config, num_cpus: int, replicas: int = 2, served_model_name: str = MODEL,
                     model_root: str | None = None, proxy: bool = False) -> RayDeployment:
    """A local Ray instance (`num_cpus` logical CPUs, loopback, no dashboard), `replicas`
    engine replicas of `config` (an EngineConfig) on Ray Serve, and the usual FastAPI app over
    them (`served_model_name`, `model_root`: build_app's) served by real uvicorn; with `proxy`,
    Ray Serve's own HTTP proxy too, on a free port."""
    import ray
    from ray import serve as ray_serve

    from nanovllm.server.app import build_app
    from nanovllm.server.ray.client import RayEngineClient, deploy, teardown

    context = ray.init(num_cpus=num_cpus, include_dashboard=False,
                       _node_ip_address="127.0.0.1", object_store_memory=80 * 2**20,
                       log_to_driver=False)
    proxy_port = free_port() if proxy else None
    try:
        if proxy:  # (deploy() leaves the proxy as it is)
            ray_serve.start(proxy_location="HeadOnly",
                            http_options={"host": "127.0.0.1", "port": proxy_port})
        handle = deploy(config, replicas, 1)
        client = RayEngineClient(handle, handle.describe.remote().result(), replicas,
                                 teardown=lambda: teardown(owns_ray=True))
    except BaseException:
        ray.shutdown()
        raise
    live = serve(build_app(client, served_model_name=served_model_name, model_root=model_root),
                 client)
    return RayDeployment(live, client, handle, context.address_info["session_dir"],
                         proxy_port)


def ray_processes(session_dir: str) -> list[str]:
    """Command lines of the live processes that belong to the Ray session in `session_dir`."""
    name = os.path.basename(session_dir)
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
            if name in cmdline or name in Path(f"/proc/{pid}/environ").read_bytes().decode(
                    errors="replace"):
                found.append(f"{pid}: {cmdline[:120]}")
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            continue
    return [p for p in found if not p.startswith(f"{os.getpid()}:")]



def stat_fields(pid: int | str) -> list[str]:
    """/proc/PID/stat after the command name (which may hold spaces): state, ppid, ..."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    return stat[stat.rindex(")") + 2:].split()


def process_tree(pid: int) -> set[tuple[int, int]]:
    """(pid, start time) of `pid` and all its descendants: what a service manager's control
    group holds of a service started as `pid`. The start time tells a reused pid apart."""
    children: dict[int, list[tuple[int, int]]] = {}
    for entry in filter(str.isdigit, os.listdir("/proc")):
        try:
            fields = stat_fields(entry)
        except (FileNotFoundError, ProcessLookupError):
            continue
        children.setdefault(int(fields[1]), []).append((int(entry), int(fields[19])))
    tree, todo = {(pid, int(stat_fields(pid)[19]))}, [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            tree.add(child)
            todo.append(child[0])
    return tree


def running(pid: int, started: int) -> bool:
    """Whether that process still runs (a zombie does not; a reused pid is another process)."""
    try:
        fields = stat_fields(pid)
    except (FileNotFoundError, ProcessLookupError):
        return False
    return int(fields[19]) == started and fields[0] != "Z"


def still_running(processes: set[tuple[int, int]]) -> list[str]:
    """Command lines of those of `processes` that still run."""
    left = []
    for pid, started in processes:
        try:
            if running(pid, started):
                cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")
                left.append(f"{pid}: {cmdline.decode()[:120]}")
        except (FileNotFoundError, ProcessLookupError):
            continue
    return left


def signal_all(processes: set[tuple[int, int]], sig: int) -> None:
    """Send `sig` to those of `processes` still running."""
    for pid, started in processes:
        try:
            if running(pid, started):
                os.kill(pid, sig)
        except ProcessLookupError:
            continue

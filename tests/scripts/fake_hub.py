"""A minimal stand-in for the Hugging Face Hub's HTTP API, serving one directory as a model repo.

Enough of the API for huggingface_hub's `model_info` and `snapshot_download` (tests point
HF_ENDPOINT at it): repo info, the file tree, and HEAD/GET of `resolve/<commit>/<file>` with
Range requests. Every request is recorded, so tests can check which files were fetched; a large
GET can be made to stall mid-file, like a network that goes dark.
"""

from __future__ import annotations

import hashlib
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

COMMIT = "0123456789abcdef0123456789abcdef01234567"


class FakeHub:
    def __init__(self, repo_id: str, files: dict[str, bytes]):
        self.repo_id, self.files, self.requests = repo_id, files, []
        self.stall: tuple[str, int] | None = None  # (file, n): its next GET sends n bytes, hangs
        self._release = threading.Event()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True).start()

    @classmethod
    def from_dir(cls, repo_id: str, directory: Path, extra: dict[str, bytes] | None = None):
        files = {p.name: p.read_bytes() for p in Path(directory).iterdir() if p.is_file()}
        return cls(repo_id, {**files, **(extra or {})})

    def release(self) -> None:
        """Ends a stalled transfer (the client sees the connection end early)."""
        self._release.set()

    def close(self) -> None:
        self.release()
        self.server.shutdown()
        self.server.server_close()

    def downloaded(self) -> set[str]:
        prefix = f"/{self.repo_id}/resolve/{COMMIT}/"
        return {p.removeprefix(prefix) for m, p in self.requests if m == "GET" and p.startswith(prefix)}


def _handler(hub: FakeHub):
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):  # keep test output clean
            pass

        def do_HEAD(self):
            self._serve(body=False)

        def do_GET(self):
            self._serve(body=True)

        def _serve(self, body: bool):
            path = self.path.split("?")[0]
            hub.requests.append((self.command, path))
            api = f"/api/models/{hub.repo_id}"
            if path.startswith(f"{api}/revision/") or path == api:
                info = {"id": hub.repo_id, "sha": COMMIT,
                        "siblings": [{"rfilename": f, "size": len(d)}
                                     for f, d in sorted(hub.files.items())]}
                return self._json(info, body)
            if path.startswith(f"{api}/tree/"):
                tree = [{"type": "file", "path": f, "size": len(d), "oid": _oid(d)}
                        for f, d in sorted(hub.files.items())]
                return self._json(tree, body)
            prefix = f"/{hub.repo_id}/resolve/"
            if path.startswith(prefix):
                name = path.removeprefix(prefix).split("/", 1)[1]
                if name in hub.files:
                    return self._file(name, body)
            self.send_response(404)
            self.send_header("X-Error-Code", "EntryNotFound")
            self.send_header("Content-Length", "0")
            self.end_headers()

        def _json(self, obj, body: bool):
            data = json.dumps(obj).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            if body:
                self.wfile.write(data)

        def _file(self, name: str, body: bool):
            data, start = hub.files[name], 0
            rng = self.headers.get("Range")
            if rng and rng.startswith("bytes="):
                start = int(rng[6:].split("-")[0])
            self.send_response(206 if start else 200)
            self.send_header("X-Repo-Commit", COMMIT)
            self.send_header("ETag", f'"{_oid(data)}"')
            self.send_header("Content-Length", str(len(data) - start))
            self.end_headers()
            if not body:
                return
            chunk = data[start:]
            if hub.stall is not None and hub.stall[0] == name:
                (_, cut), hub.stall = hub.stall, None
                self.wfile.write(chunk[:cut])
                self.wfile.flush()
                hub._release.wait()  # like a network that went dark mid-file
                return
            self.wfile.write(chunk)

    return Handler


def _oid(data: bytes) -> str:
    return hashlib.sha1(data).hexdigest()

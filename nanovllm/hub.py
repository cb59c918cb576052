"""Getting a checkpoint (GPT-2 or the Llama family) from the Hugging Face Hub onto disk, with
huggingface_hub's public API.

`download_model` asks the hub for the repo's files, fetches only those serving needs with
`snapshot_download` into a staging directory `DIR.partial`, checks that the result is a checkpoint
of a supported architecture that loads, writes a marker and renames the staging directory to `DIR`. So `DIR` either
does not exist or is complete. A rerun after an interruption keeps the files already finished.

Being offline in any form (HF_HUB_OFFLINE=1, no DNS, a refused connection, a timeout) becomes one
`HubUnavailableError` whose message is a single line pointing at dummy weights. A hub that
answered with an error (no such repo or revision, gated, an architecture we do not run) is a
`DownloadError`.
"""

from __future__ import annotations

import fnmatch
import json
import os
import shutil
import time
from collections.abc import Callable, Iterable
from pathlib import Path

from nanovllm.model.architectures.families import PRESET_FAMILIES

# The presets' repos (each family's declaration names the repo a preset stands for).
HUB_REPOS: dict[str, str] = {name: family.presets[name].repo
                             for name, family in PRESET_FAMILIES.items()}

# Everything serving reads, and nothing else: hub GPT-2 repos also carry TF, Flax, ONNX, tflite
# and pytorch_model.bin copies that would multiply the download several times over.
ALLOW_PATTERNS = ("config.json", "generation_config.json", "*.safetensors",
                  "model.safetensors.index.json", "tokenizer.json", "vocab.json", "merges.txt",
                  "tokenizer_config.json", "vocab.txt",
                  # sentence-transformers' pooling files (model/checkpoint/pooling_config.py)
                  "modules.json", "sentence_bert_config.json", "1_Pooling/config.json")
MARKER = ".nanovllm-download.json"  # written last, inside the staging dir, before the rename
DEFAULT_HUB_TIMEOUT = 5.0  # seconds per hub call; huggingface_hub's 10 s adds up when the network is dark
Log = Callable[[str], None]


class HubUnavailableError(RuntimeError):
    """The hub cannot be reached. The message is one line: `reason`, then what works offline."""

    def __init__(self, name: str, why: str) -> None:
        self.name, self.why = name, why
        self.reason = f"cannot download {name}: {why}"
        super().__init__(f"{self.reason}; {dummy_hint(name)}")

    def __reduce__(self):  # rebuilt from its arguments: it crosses from the engine process
        return type(self), (self.name, self.why)


class DownloadError(RuntimeError):
    """The hub answered, but the repo cannot be served: missing, an architecture we do not run,
    or it does not load."""


def repo_id_for(name_or_repo: str) -> str:
    """`gpt2` -> `openai-community/gpt2`; an `org/name` repo id passes through."""
    if name_or_repo in HUB_REPOS:
        return HUB_REPOS[name_or_repo]
    if name_or_repo.count("/") == 1 and all(name_or_repo.split("/")):
        return name_or_repo
    known = ", ".join(HUB_REPOS)
    raise ValueError(f"unknown model {name_or_repo!r}: use one of {known} or a hub repo id like org/name")


def download_dir(name_or_repo: str, output: str | Path | None = None) -> Path:
    """`output` if given, else models/<name> (under $NANOVLLM_MODELS_DIR if set)."""
    if output is not None:
        return Path(output)
    return Path(os.environ.get("NANOVLLM_MODELS_DIR", "models")) / name_or_repo


def staging_dir(output: Path) -> Path:
    return output.with_name(output.name + ".partial")


def read_marker(model_dir: Path) -> dict:
    try:
        return json.loads((Path(model_dir) / MARKER).read_text())
    except (OSError, ValueError):
        return {}


def select_files(repo_files: Iterable[str]) -> list[str]:
    """The repo files to fetch: top-level only, as repos keep second copies under `onnx/` etc.
    (but the pooling module's config, which sentence-transformers keeps in `1_Pooling/`)."""
    return sorted(f for f in repo_files
                  if ("/" not in f or f in ALLOW_PATTERNS)
                  and any(fnmatch.fnmatchcase(f, p) for p in ALLOW_PATTERNS))


def check_file_set(files: list[str], repo_id: str) -> None:
    """Refuses a file set we could not serve, before anything is downloaded."""
    missing = [] if "config.json" in files else ["config.json"]
    if not any(f.endswith(".safetensors") for f in files):
        missing.append("*.safetensors (nanovllm loads safetensors weights only)")
    if "tokenizer.json" not in files and not {"vocab.json", "merges.txt"} <= set(files):
        missing.append("tokenizer.json or vocab.json + merges.txt")
    if missing:
        raise DownloadError(f"{repo_id} cannot be served: the repo has no {', '.join(missing)}")


def dummy_hint(name_or_repo: str) -> str:
    """What works offline instead: a preset's random weights, or (a typo?) a local directory."""
    if name_or_repo in HUB_REPOS:
        return (f"for random weights instead run: nanovllm serve {name_or_repo} --load-format dummy "
                "(always) or --allow-dummy-fallback (only while the hub is unreachable)")
    return (f"nor is there a local directory {name_or_repo!r}; offline, give a checkpoint "
            "directory, or a preset such as gpt2 with --load-format dummy")


def _ask_hub(name: str, call: Callable, *args, **kwargs):
    """Runs one huggingface_hub call, turning its errors into ours, each one line long."""
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError, OfflineModeIsEnabled
    from huggingface_hub.utils import httpx  # the transport of this huggingface_hub version

    try:
        return call(*args, **kwargs)
    except OfflineModeIsEnabled as e:
        raise HubUnavailableError(name, "HF_HUB_OFFLINE=1 is set") from e
    except (httpx.TransportError, LocalEntryNotFoundError, ConnectionError, TimeoutError) as e:
        raise HubUnavailableError(name, f"the hub at {_endpoint()} is unreachable ({_one_line(e)})") from e
    except (HfHubHTTPError, OSError) as e:  # the hub answered no, or the file did not arrive whole
        raise DownloadError(f"{name}: {_one_line(e)}") from e


def _endpoint() -> str:
    # Read at call time, like HF_HUB_OFFLINE below: huggingface_hub reads both once, at import.
    return os.environ.get("HF_ENDPOINT") or "https://huggingface.co"


def _offline_mode() -> bool:
    """HF_HUB_OFFLINE, as huggingface_hub reads it. Checked before huggingface_hub is imported, so
    that a process that sets it late (a test, a notebook) does not freeze it on for good."""
    return os.environ.get("HF_HUB_OFFLINE", "").strip().upper() in ("1", "ON", "YES", "TRUE")


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) < 160 else text[:157] + "..."


def hub_timeout() -> float:
    return float(os.environ.get("HF_HUB_ETAG_TIMEOUT") or DEFAULT_HUB_TIMEOUT)


def verify_checkpoint(model_dir: Path):
    """Checks config.json names an architecture we run and that its weights load; returns the
    config. Raises DownloadError naming the problem (CheckpointError's message names file and
    tensor)."""
    from nanovllm.model import CheckpointError
    from nanovllm.model.architectures.registry import load_checkpoint

    model_dir = Path(model_dir)
    _check_architecture(model_dir, str(model_dir))
    try:
        config, _weights = load_checkpoint(model_dir)
    except (CheckpointError, ValueError, OSError) as e:
        raise DownloadError(f"{model_dir} does not load: {' '.join(str(e).split())}") from e
    return config


def _check_architecture(model_dir: Path, repo_id: str) -> None:
    """The config alone, read as its architecture's config: an architecture we do not run, or
    a variant of one we do not implement, is refused before any weights arrive."""
    from nanovllm.model import CheckpointError
    from nanovllm.model.architectures.registry import read_config

    try:
        read_config(model_dir)
    except (CheckpointError, ValueError, OSError) as e:
        raise DownloadError(f"{repo_id} cannot be served: {_one_line(e)}") from e


def _matches(marker: dict, repo_id: str, revision: str | None) -> bool:
    """Does a finished download hold `repo_id` at `revision` (a branch, tag or commit prefix)?"""
    wanted, commit = revision or "main", marker.get("commit", "")
    return marker.get("repo_id") == repo_id and (
        wanted == marker.get("revision") or (len(wanted) >= 7 and commit.startswith(wanted)))


def download_model(name_or_repo: str, output: str | Path | None = None,
                   revision: str | None = None, *, force: bool = False, verify: bool = True,
                   log: Log = lambda _msg: None) -> Path:
    """Downloads a checkpoint into `output` (default models/<name>) and returns that path.

    An existing complete download of the same repo and revision is reused unless `force`.
    Raises HubUnavailableError (offline), DownloadError (repo unusable) or ValueError (bad name).
    """
    repo_id, output = repo_id_for(name_or_repo), download_dir(name_or_repo, output)
    marker = read_marker(output)
    if not force and _matches(marker, repo_id, revision):
        log(f"{output} already holds {repo_id} @ {marker['commit'][:10]} (--force downloads again)")
        return output
    if output.exists() and not force and not marker and any(output.iterdir()):
        raise DownloadError(f"{output} exists and was not made by nanovllm download; "
                            "pass --force to replace it or choose another --output")
    if _offline_mode():
        raise HubUnavailableError(name_or_repo, "HF_HUB_OFFLINE=1 is set")
    from huggingface_hub import HfApi, snapshot_download  # only now: see _offline_mode

    info = _ask_hub(name_or_repo, HfApi(endpoint=_endpoint()).model_info, repo_id,
                    revision=revision, timeout=hub_timeout())
    files = select_files(s.rfilename for s in info.siblings or [])
    check_file_set(files, repo_id)
    staging = staging_dir(output)
    log(f"downloading {repo_id} @ {info.sha[:10]} into {output}: {', '.join(files)}")

    def fetch(patterns: list[str]) -> None:  # pinned to the commit listed, whatever is pushed now
        _ask_hub(name_or_repo, snapshot_download, repo_id, revision=info.sha, local_dir=staging,
                 allow_patterns=patterns, endpoint=_endpoint(), etag_timeout=hub_timeout())

    try:
        fetch(["config.json"])  # another architecture is refused before its weights arrive
        _check_architecture(staging, repo_id)
        fetch(files)
        if verify:
            verify_checkpoint(staging)
    except DownloadError:
        shutil.rmtree(staging, ignore_errors=True)  # a rerun would keep the bad files
        raise
    shutil.rmtree(staging / ".cache", ignore_errors=True)  # huggingface_hub's resume bookkeeping
    marker = {"repo_id": repo_id, "revision": revision or "main", "commit": info.sha,
              "files": files, "downloaded_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    (staging / MARKER).write_text(json.dumps(marker, indent=2) + "\n")
    _publish(staging, output)
    log(f"done: {output}")
    return output


def _publish(staging: Path, output: Path) -> None:
    """Makes the finished staging dir visible as `output` with renames (atomic on one filesystem)."""
    old = output.with_name(f"{output.name}.old-{os.getpid()}")
    if output.exists():
        os.replace(output, old)
    os.replace(staging, output)
    shutil.rmtree(old, ignore_errors=True)


def resolve_model(name_or_dir: str | Path, revision: str | None = None, *,
                  log: Log = lambda _msg: None) -> Path:
    """The checkpoint directory for a model argument, downloading only when necessary.

    A local directory is used as is; so is models/<name> when it holds a finished download of
    the requested revision, or a checkpoint put there by hand (a config.json and no marker);
    anything else is downloaded (HubUnavailableError when offline).
    """
    path = Path(name_or_dir).expanduser()
    if path.is_dir():
        return path
    name = str(name_or_dir)
    if name.startswith((".", "/", "~")) or name.count("/") > 1:
        raise FileNotFoundError(f"model directory {name} does not exist")
    repo_id, output = repo_id_for(name), download_dir(name)
    marker = read_marker(output)
    if _matches(marker, repo_id, revision) or (not marker and (output / "config.json").is_file()):
        return output
    return download_model(name, revision=revision, log=log)

"""Getting a GPT-2 checkpoint onto disk: from the Hugging Face Hub, or as random "dummy" weights.

`download_model` fetches only the files serving needs into a staging directory `DIR.partial`,
checks that the result is a GPT-2 checkpoint that loads, writes a completion marker and then
renames the staging directory to `DIR` in one step. So `DIR` either does not exist or is complete:
an interrupted run leaves only `DIR.partial`, which the next run resumes: finished files are kept
and a half-downloaded one continues from its last byte (an HTTP Range request).

The hub is often unreachable (CI, air-gapped machines). Every way of being offline - HF_HUB_OFFLINE=1,
no DNS, a refused connection, a timeout - becomes one `HubUnavailableError` whose message is a
single line pointing at the dummy checkpoint, so callers can print it as is.
"""

from __future__ import annotations

import fnmatch
import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterable
from contextlib import contextmanager
from pathlib import Path

from nanovllm.model import PRESETS

# The hub names are model.PRESETS' names (the one list of them); each one's repo is its
# organisation's: openai-community's, but for distilgpt2.
_HUB_ORGS = {"distilgpt2": "distilbert"}
HUB_REPOS: dict[str, str] = {name: f"{_HUB_ORGS.get(name, 'openai-community')}/{name}"
                             for name in PRESETS}

# Everything serving reads, and nothing else: hub GPT-2 repos also carry TF, Flax, ONNX, tflite
# and pytorch_model.bin copies that would multiply the download several times over.
ALLOW_PATTERNS: tuple[str, ...] = (
    "config.json",
    "generation_config.json",
    "*.safetensors",
    "model.safetensors.index.json",
    "tokenizer.json",
    "vocab.json",
    "merges.txt",
    "tokenizer_config.json",
)

MARKER = ".nanovllm-download.json"  # written last, inside the staging dir, before the rename
PARTIAL_SUFFIX = ".partial"
DEFAULT_HUB_TIMEOUT = 5.0  # seconds; hub's default 10 s per call adds up when the network is dark


class HubUnavailableError(RuntimeError):
    """The hub cannot be reached (offline mode, no network). The message is one line: `reason`
    (what failed, and why), then a hint at what works offline."""

    def __init__(self, reason: str, hint: str = "") -> None:
        super().__init__(f"{reason}; {hint}" if hint else reason)
        self.reason = reason


class DownloadError(RuntimeError):
    """The hub answered, but the repo cannot be served: missing, not GPT-2, or it does not load."""


Log = Callable[[str], None]


def _quiet(_msg: str) -> None:
    pass


# --------------------------------------------------------------------------- names and places


def repo_id_for(name_or_repo: str) -> str:
    """`gpt2` -> `openai-community/gpt2`; an `org/name` repo id passes through."""
    if name_or_repo in HUB_REPOS:
        return HUB_REPOS[name_or_repo]
    if name_or_repo.count("/") == 1 and all(name_or_repo.split("/")):
        return name_or_repo
    known = ", ".join(HUB_REPOS)
    raise ValueError(f"unknown model {name_or_repo!r}: use one of {known} or a hub repo id like org/name")


def models_root() -> Path:
    return Path(os.environ.get("NANOVLLM_MODELS_DIR", "models"))


def default_output(name_or_repo: str) -> Path:
    """models/gpt2 for a preset name, models/org/name for a repo id."""
    return models_root() / name_or_repo


def download_dir(name_or_repo: str, output: str | Path | None = None) -> Path:
    """Where download_model puts a model: `output` if given, else models/<name>."""
    return Path(output) if output is not None else default_output(name_or_repo)


def staging_dir(output: Path) -> Path:
    return output.with_name(output.name + PARTIAL_SUFFIX)


def is_complete(model_dir: Path) -> bool:
    return (Path(model_dir) / MARKER).is_file()


def read_marker(model_dir: Path) -> dict:
    try:
        return json.loads((Path(model_dir) / MARKER).read_text())
    except (OSError, ValueError):
        return {}


def select_files(repo_files: Iterable[str]) -> list[str]:
    """The repo files to fetch: top-level files matching ALLOW_PATTERNS.

    Top-level only because fnmatch's `*` also matches `/`, and repos keep whole second copies of
    config and tokenizer under `onnx/` and similar folders.
    """
    return sorted(f for f in repo_files
                  if "/" not in f and any(fnmatch.fnmatchcase(f, p) for p in ALLOW_PATTERNS))


def check_file_set(files: list[str], repo_id: str) -> None:
    """Refuses a file set we could not serve, before anything large is downloaded."""
    missing = [f for f in ("config.json",) if f not in files]
    if not any(f.endswith(".safetensors") for f in files):
        missing.append("*.safetensors (nanovllm loads safetensors weights only)")
    if "tokenizer.json" not in files and not {"vocab.json", "merges.txt"} <= set(files):
        missing.append("tokenizer.json or vocab.json + merges.txt")
    if missing:
        raise DownloadError(f"{repo_id} cannot be served: the repo has no {', '.join(missing)}")


# --------------------------------------------------------------------------- offline detection


def hub_timeout() -> float:
    return float(os.environ.get("HF_HUB_ETAG_TIMEOUT") or DEFAULT_HUB_TIMEOUT)


def hub_endpoint() -> str:
    # Read at call time: huggingface_hub reads HF_ENDPOINT once, at import.
    return os.environ.get("HF_ENDPOINT") or "https://huggingface.co"


def offline_env() -> bool:
    value = os.environ.get("HF_HUB_OFFLINE", "")
    return value.strip().upper() in ("1", "ON", "YES", "TRUE")


def dummy_hint(name_or_repo: str) -> str:
    """What works offline instead: a preset's random weights, or (a typo?) a local directory."""
    if name_or_repo in HUB_REPOS:  # the presets share these names
        return (f"for random weights instead run: nanovllm serve {name_or_repo} --load-format dummy "
                "(always) or --allow-dummy-fallback (only while the hub is unreachable)")
    return (f"nor is there a local directory {name_or_repo!r}; offline, give a checkpoint "
            "directory, or a preset such as gpt2 with --load-format dummy")


def offline_error(name_or_repo: str, why: str) -> HubUnavailableError:
    return HubUnavailableError(f"cannot download {name_or_repo}: {why}", dummy_hint(name_or_repo))


def _is_connection_error(exc: BaseException) -> bool:
    """True for 'no network' errors of httpx (hub >= 1.0), requests (older hubs) and the OS."""
    if isinstance(exc, (ConnectionError, TimeoutError)):
        return True
    names = {cls.__name__ for cls in type(exc).__mro__}
    return bool(names & {"TransportError", "ConnectionError", "Timeout", "TimeoutException",
                         "OfflineModeIsEnabled", "RemoteProtocolError"})


def _describe(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) < 120 else text[:117] + "..."


# --------------------------------------------------------------------------- talking to the hub


def hub_listing(repo_id: str, revision: str | None) -> tuple[str, dict[str, int | None]]:
    """(commit sha, file name -> size) of a repo revision, with a short timeout."""
    from huggingface_hub import HfApi

    info = HfApi(endpoint=hub_endpoint()).model_info(
        repo_id, revision=revision, timeout=hub_timeout(), files_metadata=True)
    return info.sha, {s.rfilename: s.size for s in info.siblings or []}


def hub_fetch(repo_id: str, sha: str, name: str, size: int | None, dest: Path) -> None:
    """Downloads one file at commit `sha` into `dest`, continuing the `.incomplete` file an
    interrupted run left behind (huggingface_hub >= 2 restarts such files from byte 0)."""
    from huggingface_hub import hf_hub_url
    from huggingface_hub.file_download import http_get
    from huggingface_hub.utils import build_hf_headers

    target, part = dest / name, dest / f"{name}.incomplete"
    if target.is_file() and size in (None, target.stat().st_size):
        return
    have = part.stat().st_size if part.is_file() else 0
    if size is not None and have > size:
        part.unlink()
        have = 0
    url = hf_hub_url(repo_id, name, revision=sha, endpoint=hub_endpoint())
    with open(part, "ab") as f:
        http_get(url, f, resume_size=have, headers=build_hf_headers(), expected_size=size,
                 displayed_filename=name)
    os.replace(part, target)


def _hub_call(name: str, fn, *args):
    """Runs one hub call: 'offline' in any form becomes HubUnavailableError, any other hub
    error (missing repo or file, gated repo, bad revision) a one-line DownloadError."""
    try:
        return fn(*args)
    except (HubUnavailableError, DownloadError, KeyboardInterrupt):
        raise
    except Exception as e:
        if _is_connection_error(e):
            raise offline_error(name, f"the hub at {hub_endpoint()} is unreachable "
                                      f"({_describe(e)})") from e
        if isinstance(e, OSError):  # huggingface_hub's HTTP errors are OSErrors
            raise DownloadError(f"{name}: {_describe(e)}") from e
        raise


# --------------------------------------------------------------------------- verification


def verify_checkpoint(model_dir: Path):
    """Checks config.json says GPT-2 and that model.load_gpt2 loads the weights; returns the config.

    Raises DownloadError naming the problem (the CheckpointError message names file and tensor).
    """
    from nanovllm.model import CheckpointError, load_gpt2

    model_dir = Path(model_dir)
    _check_model_type(model_dir, str(model_dir))
    try:
        config, _weights = load_gpt2(model_dir)
    except (CheckpointError, ValueError, OSError) as e:
        raise DownloadError(f"{model_dir} does not load: {' '.join(str(e).split())}") from e
    return config


def _write_marker(model_dir: Path, repo_id: str, revision: str | None, sha: str,
                  files: list[str]) -> None:
    marker = {"repo_id": repo_id, "revision": revision or "main", "commit": sha, "files": files,
              "downloaded_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    (model_dir / MARKER).write_text(json.dumps(marker, indent=2) + "\n")


def _publish(staging: Path, output: Path) -> None:
    """Makes the finished staging dir visible as `output` with renames (atomic on one filesystem)."""
    old = None
    if output.exists():
        old = output.with_name(f"{output.name}.old-{os.getpid()}")
        os.replace(output, old)
    os.replace(staging, output)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _check_model_type(model_dir: Path, repo_id: str) -> None:
    try:
        model_type = json.loads((model_dir / "config.json").read_text()).get("model_type")
    except (OSError, ValueError) as e:
        raise DownloadError(f"{repo_id}: config.json is unreadable ({_describe(e)})") from e
    if model_type != "gpt2":
        raise DownloadError(f"{repo_id} is not a GPT-2 model (config.json model_type is "
                            f"{model_type!r}); nanovllm serves only the GPT-2 architecture")


def _matches(marker: dict, repo_id: str, revision: str | None) -> bool:
    """Does a finished download hold `repo_id` at `revision` (a branch, tag or commit prefix)?"""
    wanted = revision or "main"
    commit = marker.get("commit", "")
    return marker.get("repo_id") == repo_id and (
        wanted == marker.get("revision") or (len(wanted) >= 7 and commit.startswith(wanted)))


# --------------------------------------------------------------------------- public entry points


def download_model(name_or_repo: str, output: str | Path | None = None,
                   revision: str | None = None, *, force: bool = False, verify: bool = True,
                   log: Log = _quiet) -> Path:
    """Downloads a GPT-2 checkpoint into `output` (default models/<name>) and returns that path.

    An existing complete download of the same repo and revision is reused unless `force`.
    Raises HubUnavailableError (offline), DownloadError (repo unusable) or ValueError (bad name).
    """
    repo_id = repo_id_for(name_or_repo)
    output = download_dir(name_or_repo, output)
    marker = read_marker(output)
    if not force and _matches(marker, repo_id, revision):
        log(f"{output} already holds {repo_id} @ {marker['commit'][:10]} (--force downloads again)")
        return output
    if output.exists() and not force and not marker and any(output.iterdir()):
        raise DownloadError(f"{output} exists and was not made by nanovllm download; "
                            "pass --force to replace it or choose another --output")
    if offline_env():
        raise offline_error(name_or_repo, "HF_HUB_OFFLINE=1 is set")
    sha, sizes = _hub_call(name_or_repo, hub_listing, repo_id, revision)
    files = select_files(sizes)
    check_file_set(files, repo_id)
    staging = staging_dir(output)
    staging.mkdir(parents=True, exist_ok=True)
    with _exclusive(staging):
        log(f"downloading {repo_id} @ {sha[:10]} into {output}: {', '.join(files)}")
        _fetch_and_check(name_or_repo, repo_id, sha, {f: sizes[f] for f in files}, staging,
                         verify)
        _write_marker(staging, repo_id, revision, sha, files)
        _publish(staging, output)
    log(f"done: {output}")
    return output


@contextmanager
def _exclusive(staging: Path):
    """One download per staging dir: two writers appending to one .incomplete file corrupt it."""
    from filelock import FileLock, Timeout  # a huggingface_hub dependency

    lock = FileLock(str(staging.with_name(f".{staging.name}.lock")), timeout=0)
    try:
        lock.acquire()
    except Timeout:
        raise DownloadError(f"another download is writing {staging}; wait for it") from None
    try:
        yield
    finally:
        lock.release()


def _fetch_and_check(name: str, repo_id: str, sha: str, sizes: dict[str, int | None],
                     staging: Path, verify: bool) -> None:
    """Fills the staging dir. Connection trouble keeps it (to resume); a bad checkpoint removes it,
    because resuming would skip the bad files instead of fetching them again."""
    try:
        # config.json first: a non-GPT-2 repo is refused before gigabytes of weights arrive;
        # then the small files, so the large ones come last.
        _hub_call(name, hub_fetch, repo_id, sha, "config.json", sizes["config.json"], staging)
        _check_model_type(staging, repo_id)
        for f in sorted(sizes, key=lambda f: (f.endswith(".safetensors"), f)):
            _hub_call(name, hub_fetch, repo_id, sha, f, sizes[f], staging)
        if verify:
            verify_checkpoint(staging)
    except DownloadError:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def resolve_model(name_or_dir: str | Path, revision: str | None = None, *,
                  log: Log = _quiet) -> Path:
    """The checkpoint directory for a model argument, downloading only when necessary.

    A local directory is used as is; so is models/<name> when it holds a finished download of
    the requested revision, or a checkpoint put there by hand (a config.json and no download
    marker); anything else is downloaded (HubUnavailableError when offline).
    """
    path = Path(name_or_dir).expanduser()
    if path.is_dir():
        return path
    name = str(name_or_dir)
    if name.startswith((".", "/", "~")) or name.count("/") > 1:
        raise FileNotFoundError(f"model directory {name} does not exist")
    repo_id = repo_id_for(name)
    output = default_output(name)
    marker = read_marker(output)
    if _matches(marker, repo_id, revision) or (not marker and (output / "config.json").is_file()):
        return output
    return download_model(name, revision=revision, log=log)


def dummy_checkpoint_dir(preset: str = "gpt2") -> Path:
    """A random-weights checkpoint of `preset`'s shapes, written once and reused: under
    $NANOVLLM_CACHE, else $XDG_CACHE_HOME/nanovllm, else ~/.cache/nanovllm, in dummy-v<N>/<preset>.

    Written to a temporary sibling and renamed, so concurrent first calls (engine and server
    tests, say) never see half a checkpoint; whichever rename lands first wins.
    """
    from nanovllm.model import (  # at call time: tests swap the writer
        cache_root,
        write_dummy_checkpoint,
    )
    from nanovllm.model.dummy import DUMMY_FORMAT_VERSION

    if preset not in PRESETS:
        raise ValueError(f"no dummy preset {preset!r}: use one of {', '.join(PRESETS)}")
    out = cache_root() / f"dummy-v{DUMMY_FORMAT_VERSION}" / preset
    if (out / "config.json").is_file():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{preset}.tmp-"))
    try:
        write_dummy_checkpoint(tmp, preset)
        try:
            os.rename(tmp, out)
        except OSError:
            if not (out / "config.json").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out

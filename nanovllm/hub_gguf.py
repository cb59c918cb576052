"""A GGUF file from the Hugging Face hub, named as `llama-server -hf` and Ollama's `hf.co/...`
names take it: `org/repo:Q4_K_M` is the repository's one `.gguf` file whose name carries that
quantization tag (`qwen3-0.6b-Q4_K_M.gguf`, `model.Q4_K_M.gguf`).

The file lands in models/org/repo/ (under $NANOVLLM_MODELS_DIR if set), downloaded with
huggingface_hub's `hf_hub_download` (resumed if interrupted, the name pinned to the commit the
listing came from); a file already there is used without asking the hub. Offline and hub errors
are `hub.py`'s (HubUnavailableError, DownloadError).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import Path

from nanovllm.hub import (
    DownloadError,
    HubUnavailableError,
    Log,
    _ask_hub,
    _endpoint,
    _offline_mode,
    download_dir,
    hub_timeout,
)

# org/repo:TAG, optionally behind Ollama's hf.co/ (or huggingface.co/) prefix
GGUF_REF = re.compile(r"(?:(?:hf\.co|huggingface\.co)/)?([\w.-]+/[\w.-]+):([\w.-]+)")
SHARD = re.compile(r"-\d{5}-of-\d{5}\.gguf$")


def parse_gguf_ref(name: str) -> tuple[str, str] | None:
    """(repo id, quantization tag) of an `org/repo:TAG` name, else None."""
    match = GGUF_REF.fullmatch(name)
    return (match[1], match[2]) if match else None


def tagged(filename: str, tag: str) -> bool:
    """Whether a file's name carries the tag as a whole word: `x-Q4_K_M.gguf`, not `x-Q4_K_M_L`."""
    name = filename.rsplit("/", 1)[-1]
    return (name.lower().endswith(".gguf")
            and re.search(rf"(^|[-._]){re.escape(tag)}([-.]|$)", name[:-5], re.I) is not None)


def pick_file(files: Iterable[str], tag: str, repo_id: str) -> str:
    """The repository's one `.gguf` file carrying `tag` (a model, not a vision projector);
    a DownloadError listing the tags it has when there is none, or several."""
    ggufs = sorted(f for f in files if f.lower().endswith(".gguf")
                   and "mmproj" not in f.rsplit("/", 1)[-1].lower())
    found = [f for f in ggufs if tagged(f, tag)]
    if any(SHARD.search(f) for f in found):
        raise DownloadError(f"{repo_id}:{tag} is split into several files "
                            f"({', '.join(found)}); nanovllm loads single-file GGUFs")
    if len(found) == 1:
        return found[0]
    if not found:
        have = ", ".join(ggufs) if ggufs else "none"
        raise DownloadError(f"{repo_id} has no GGUF file tagged {tag}; its GGUF files: {have}")
    raise DownloadError(f"{repo_id}:{tag} matches several files ({', '.join(found)}); "
                        "download the one you want and give its path")


def local_gguf(repo_id: str, tag: str) -> Path | None:
    """A file for `repo_id:tag` downloaded before, if there is exactly one."""
    folder = download_dir(repo_id)
    found = [p for p in folder.rglob("*.gguf") if tagged(p.name, tag)] if folder.is_dir() else []
    return found[0] if len(found) == 1 else None


def download_gguf(name: str, revision: str | None = None, *,
                  log: Log = lambda _msg: None) -> Path:
    """The local path of `org/repo:TAG`'s file, downloading it if it is not there yet."""
    repo_id, tag = parse_gguf_ref(name)
    if (found := local_gguf(repo_id, tag)) is not None:
        return found
    if _offline_mode():
        raise HubUnavailableError(name, "HF_HUB_OFFLINE=1 is set")
    from huggingface_hub import HfApi, hf_hub_download  # only now: see hub._offline_mode

    info = _ask_hub(name, HfApi(endpoint=_endpoint()).model_info, repo_id, revision=revision,
                    timeout=hub_timeout())
    filename = pick_file((s.rfilename for s in info.siblings or []), tag, repo_id)
    output = download_dir(repo_id)
    log(f"downloading {repo_id} @ {info.sha[:10]}: {filename} into {output}")
    path = _ask_hub(name, hf_hub_download, repo_id, filename, revision=info.sha,
                    local_dir=output, endpoint=_endpoint(), etag_timeout=hub_timeout())
    log(f"done: {path}")
    return Path(path)

"""scripts/lab/trace_request.py: the files one streamed completion runs, from HTTP to a sampled
token, stay few enough for a reader to follow (31 in all, 10 of them in the server: the API's
protocol, routes and renderer each have a module in its folder, and the model pool binds the
model the request names; the step's output processing and its statistics, the scheduling policy,
and the model's norms and activations, each have a module of their own, beside the engine and
beside the composition file), and the instrument sees every layer of the path."""

from __future__ import annotations

from nanovllm.scripts.lab import trace_request

MOST_FILES, MOST_SERVER_FILES = 31, 10


def test_one_streamed_completion_runs_few_files(tiny_ckpt):
    files = trace_request.trace(str(tiny_ckpt), max_tokens=4)
    groups = trace_request.by_folder(files)
    assert {"server", "nanovllm", "runner", "model"} <= set(groups), files  # it sees the path
    assert "nanovllm/engine.py" in files and "runner/sampler.py" in files
    assert len(groups["server"]) <= MOST_SERVER_FILES, groups["server"]
    assert len(files) <= MOST_FILES, files

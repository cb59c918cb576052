"""lm-evaluation-harness against the live server: a local multiple-choice task scored through
`local-completions` (echo + logprobs requests, lm-eval's remote tokenizer reading
/tokenizer_info, /tokenize and /detokenize) and through lm-eval's own `hf` backend (transformers
on the same checkpoint). Every choice's loglikelihood must agree."""

from __future__ import annotations

from pathlib import Path

import lm_eval
import pytest

from tests.conftest import TINY

HERE = Path(__file__).parent / "lm_eval_task"
TASK = "nanovllm_tiny_mc"
NUM_CHOICES = 4 + 3 + 3 + 2 + 4 + 3


def loglikelihoods(model: str, model_args: dict) -> dict[tuple[int, int], float]:
    from lm_eval.tasks import TaskManager

    results = lm_eval.simple_evaluate(
        model=model, model_args=model_args, tasks=[TASK], batch_size=4, log_samples=True,
        task_manager=TaskManager(include_path=str(HERE), include_defaults=False))
    samples = results["samples"][TASK]
    return {(s["doc_id"], i): float(r[0][0]) for s in samples for i, r in enumerate(s["resps"])}


@pytest.fixture
def offline(monkeypatch):
    """The dataset is a local file; nothing may reach for the hub."""
    for var in ("HF_DATASETS_OFFLINE", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.setenv(var, "1")
    monkeypatch.chdir(HERE)  # the task's data_files path is relative


def test_local_completions_agrees_with_hf(offline, live_chat, tiny_ckpt):
    served = loglikelihoods("local-completions", {
        "model": "tiny-gpt2", "base_url": f"{live_chat.url}/v1/completions",
        "tokenizer_backend": "remote", "max_length": TINY["n_positions"], "num_concurrent": 1,
        "max_retries": 1})
    reference = loglikelihoods("hf", {"pretrained": str(tiny_ckpt), "dtype": "float32",
                                      "device": "cpu", "max_length": TINY["n_positions"]})
    assert len(served) == len(reference) == NUM_CHOICES
    for key, value in reference.items():
        assert served[key] == pytest.approx(value, abs=1e-4), key

"""The comparison side of scripts/benchmark.py: Hugging Face transformers' generate() on the
same checkpoint (GPT2LMHeadModel, LlamaForCausalLM, ... as config.json names it),
timed from outside with the first token's moment taken from inside (a stopping criterion)."""

from __future__ import annotations

import importlib.util
import time
from pathlib import Path

# torch and transformers are not runtime dependencies; pip's default torch is the multi-GB CUDA
# build, so the hint names the CPU one (torch pinned as in the dev extra).
INSTALL_TORCH_CPU = "pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu"
INSTALL_REFERENCE = f"{INSTALL_TORCH_CPU} && pip install transformers"


def missing_reference() -> str | None:
    """"torch", "transformers" or both ("torch, transformers") when they are not installed;
    checked before anything is loaded, so the user learns it at once."""
    missing = [m for m in ("torch", "transformers") if importlib.util.find_spec(m) is None]
    return ", ".join(missing) or None


def load_torch_first() -> None:
    """Loads torch before the engine starts numba's OpenMP threads. Loaded after them, torch
    runs its parallel operators on the GNU OpenMP numba loaded (the same soname as its own),
    and sentence-transformers' encoder ran several times slower beside the engine than alone:
    the reference must run at its own speed."""
    import torch  # noqa: F401


class TransformersRunner:
    """The same workload through transformers' generate (see scripts/benchmark.py for the
    method)."""

    def __init__(self, model_dir: Path, threads: int):
        import torch
        import transformers
        from transformers import AutoModelForCausalLM

        transformers.utils.logging.set_verbosity_error()
        transformers.utils.logging.disable_progress_bar()
        torch.set_num_threads(threads)
        try:
            model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
        except TypeError:  # transformers < 4.56 calls it torch_dtype
            model = AutoModelForCausalLM.from_pretrained(model_dir, torch_dtype=torch.float32)
        self.model, self.torch = model.eval(), torch
        eos = model.config.eos_token_id
        self.eos = eos[0] if isinstance(eos, list) else eos  # (Llama 3 lists several)
        self.info = {"torch": torch.__version__, "torch_threads": torch.get_num_threads(),
                     "transformers": transformers.__version__,
                     "attn_implementation": getattr(model.config, "_attn_implementation", None)}

    def run(self, prompts: list[list[int]], output_len: int,
            temperature: float = 0.0) -> tuple[float, float | None]:
        """(prefill seconds, decode seconds or None when output_len is 1) of one generate(),
        greedy or sampled at `temperature` from the whole distribution (no top-k, no top-p)."""
        from transformers import StoppingCriteriaList

        torch = self.torch
        ids = torch.tensor(prompts, dtype=torch.long)
        clock = _FirstTokenClock(torch)
        sampling = ({"do_sample": True, "temperature": temperature, "top_k": 0, "top_p": 1.0}
                    if temperature else {"do_sample": False})
        t0 = time.perf_counter()
        with torch.inference_mode():
            out = self.model.generate(ids, attention_mask=torch.ones_like(ids), **sampling,
                                      max_new_tokens=output_len, min_new_tokens=output_len,
                                      pad_token_id=self.eos, use_cache=True,
                                      stopping_criteria=StoppingCriteriaList([clock]))
        t_end = time.perf_counter()
        if out.shape[1] != ids.shape[1] + output_len or clock.t_first is None:
            raise RuntimeError(f"transformers generated {out.shape[1] - ids.shape[1]} tokens, "
                               f"expected {output_len}")
        return clock.t_first - t0, (t_end - clock.t_first if output_len > 1 else None)


class _FirstTokenClock:
    """A stopping criterion that never stops: generate() calls it once per step, so its first
    call marks the moment the first token of every sequence exists."""

    def __init__(self, torch):
        self.torch, self.t_first = torch, None

    def __call__(self, input_ids, scores, **kwargs):
        if self.t_first is None:
            self.t_first = time.perf_counter()
        return self.torch.zeros(input_ids.shape[0], dtype=self.torch.bool)

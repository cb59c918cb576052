"""LLM.embed and LLM.score through the engine: equal to sentence-transformers, batched many
per step, and every bad input refused naming its field."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from bert_checkpoints import PAIRS, TEXTS

from nanovllm import LLM
from nanovllm.values.errors import InvalidRequestError
from nanovllm.values.pooling_params import PoolingParams

st = pytest.importorskip("sentence_transformers")


def cosines(a, b):
    a, b = np.asarray(a), np.asarray(b)
    return (a * b).sum(-1) / np.linalg.norm(a, axis=-1) / np.linalg.norm(b, axis=-1)


def test_embed_equals_sentence_transformers_in_one_step(st_embedder):
    llm = LLM(str(st_embedder))
    outputs = llm.embed(TEXTS, use_tqdm=False)
    assert llm.engine.num_steps == 1  # every text in one step
    want = st.SentenceTransformer(str(st_embedder), device="cpu").encode(TEXTS)
    got = np.array([o.outputs.embedding for o in outputs])
    assert cosines(got, want).min() >= 0.99999
    np.testing.assert_allclose(got, want, atol=1e-5)
    assert outputs[0].prompt_token_ids[0] == 101


def test_a_small_token_budget_spreads_texts_over_steps_and_changes_nothing(st_embedder):
    texts = TEXTS * 5
    want = LLM(str(st_embedder)).embed(texts, use_tqdm=False)
    llm = LLM(str(st_embedder), max_num_batched_tokens=20, max_num_seqs=3)
    got = llm.embed(texts, use_tqdm=False)
    assert llm.engine.num_steps >= len(texts) // 3  # at most 3 a step
    np.testing.assert_allclose([o.outputs.embedding for o in got],
                               [o.outputs.embedding for o in want], atol=1e-6)


def test_token_ids_embed_like_their_text(st_embedder):
    llm = LLM(str(st_embedder))
    text = llm.embed("Hello world", use_tqdm=False)[0]
    ids = llm.embed([text.prompt_token_ids], use_tqdm=False)[0]
    np.testing.assert_allclose(ids.outputs.embedding, text.outputs.embedding, atol=1e-6)


def test_score_equals_cross_encoder_predict(cross_encoder):
    llm = LLM(str(cross_encoder))
    want = st.CrossEncoder(str(cross_encoder), device="cpu").predict(PAIRS)
    got = llm.score([q for q, _ in PAIRS], [d for _, d in PAIRS], use_tqdm=False)
    np.testing.assert_allclose([o.outputs.score for o in got], want, atol=1e-5)
    one_to_many = llm.score(PAIRS[0][0], [PAIRS[0][1], PAIRS[1][1]], use_tqdm=False)
    np.testing.assert_allclose([o.outputs.score for o in one_to_many], want[:2], atol=1e-5)


def test_score_of_an_embedding_model_is_the_cosine_similarity(st_embedder):
    model = st.SentenceTransformer(str(st_embedder), device="cpu")
    a, b = model.encode([p[0] for p in PAIRS]), model.encode([p[1] for p in PAIRS])
    got = LLM(str(st_embedder)).score([p[0] for p in PAIRS], [p[1] for p in PAIRS],
                                      use_tqdm=False)
    np.testing.assert_allclose([o.outputs.score for o in got], cosines(a, b), atol=1e-5)


def test_truncation_keeps_the_special_tokens_as_sentence_transformers(st_embedder):
    llm = LLM(str(st_embedder))
    long = " ".join(["the cat sat on the mat"] * 20)  # 120 words: more than 64 positions
    with pytest.raises(InvalidRequestError, match="truncate_prompt_tokens") as err:
        llm.embed(long, use_tqdm=False)
    assert err.value.param == "prompt"
    got = llm.embed(long, truncate_prompt_tokens=16, use_tqdm=False)[0]
    assert len(got.prompt_token_ids) == 16 and got.prompt_token_ids[-1] == 102
    model = st.SentenceTransformer(str(st_embedder), device="cpu")
    model.max_seq_length = 16
    assert cosines(got.outputs.embedding, model.encode([long])[0]) >= 0.99999


def test_bad_inputs_are_refused_naming_the_field(st_embedder):
    llm = LLM(str(st_embedder))
    cases = [("", "prompt"), ([], "prompt"), ([10**6], "prompt"), ({"x": 1}, "prompt"),
             ("the cat sat " * 100, "prompt"), ([5] * 65, "prompt")]
    for prompt, param in cases:
        with pytest.raises(InvalidRequestError) as err:
            llm.embed([prompt], use_tqdm=False)
        assert err.value.param == param, prompt
    with pytest.raises(InvalidRequestError, match="Matryoshka") as err:
        llm.embed("a", pooling_params=PoolingParams(dimensions=8), use_tqdm=False)
    assert err.value.param == "dimensions"
    with pytest.raises(ValueError, match="one text_1"):
        llm.score("a", [], use_tqdm=False)


def test_matryoshka_dimensions_cut_then_normalize(st_embedder, tmp_path):
    model_dir = tmp_path / "m"
    shutil.copytree(st_embedder, model_dir)
    config = json.loads((model_dir / "config.json").read_text())
    (model_dir / "config.json").write_text(json.dumps({**config, "matryoshka_dimensions": [8, 16]}))
    llm = LLM(str(model_dir))
    full = np.array(llm.embed("Hello world", use_tqdm=False)[0].outputs.embedding)
    cut = llm.embed("Hello world", pooling_params=PoolingParams(dimensions=8), use_tqdm=False)[0]
    np.testing.assert_allclose(cut.outputs.embedding, full[:8] / np.linalg.norm(full[:8]),
                               atol=1e-6)
    with pytest.raises(InvalidRequestError, match="8, 16"):
        llm.embed("a", pooling_params=PoolingParams(dimensions=12), use_tqdm=False)


def test_a_generation_model_makes_no_embeddings(tiny_ckpt):
    llm = LLM(str(tiny_ckpt))
    for call in (lambda: llm.embed("hello", use_tqdm=False),
                 lambda: llm.score("hello", ["world"], use_tqdm=False)):
        with pytest.raises(ValueError, match="runner='pooling'") as err:
            call()
        assert "LLM.generate" in str(err.value) and err.value.param == "model"


def test_every_generating_method_on_a_pooling_model_names_what_to_use(st_embedder,
                                                                      cross_encoder):
    """A ValueError about `model` saying what the model does instead, never a TypeError from
    deep inside (an encoder's tokenizer has no EOS for a chat template, ...)."""
    from nanovllm.values.beam_search_params import BeamSearchParams

    llm = LLM(str(st_embedder))
    calls = {"generate": lambda: llm.generate("hello", use_tqdm=False),
             "chat": lambda: llm.chat([{"role": "user", "content": "hi"}], use_tqdm=False),
             "chat with a template": lambda: llm.chat(
                 [{"role": "user", "content": "hi"}], chat_template="{{ messages }}",
                 use_tqdm=False),
             "beam_search": lambda: llm.beam_search(["hello"], BeamSearchParams(2, 4))}
    for name, call in calls.items():
        with pytest.raises(ValueError, match="LLM.embed, LLM.score") as err:
            call()
        assert err.value.param == "model", name
    with pytest.raises(ValueError, match="LLM.score") as err:
        LLM(str(cross_encoder)).embed("hello", use_tqdm=False)
    assert err.value.param == "model"


@pytest.mark.parametrize("variant", ["qwen2", "qwen3"])
def test_a_decoder_started_for_pooling_embeds_its_last_token(llama_ckpt, variant):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    model_dir = llama_ckpt(variant)
    llm = LLM(str(model_dir), runner="pooling")
    outputs = llm.embed(TEXTS[:3], use_tqdm=False)
    model = transformers.AutoModel.from_pretrained(model_dir).eval()
    for out in outputs:
        with torch.no_grad():
            hidden = model(torch.tensor([out.prompt_token_ids])).last_hidden_state[0, -1].numpy()
        assert cosines(out.outputs.embedding, hidden) >= 0.99999
        np.testing.assert_allclose(np.linalg.norm(out.outputs.embedding), 1, atol=1e-5)


def gpt2_last_hidden(model_dir, token_ids: list[int]) -> np.ndarray:
    """transformers' GPT2Model's final hidden state (after ln_f) at the last token, unit length
    (vLLM's default for an embedding)."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    model = transformers.GPT2Model.from_pretrained(model_dir).eval()
    with torch.no_grad():
        hidden = model(torch.tensor([token_ids])).last_hidden_state[0, -1].numpy()
    return hidden / np.linalg.norm(hidden)


def test_gpt2_started_for_pooling_embeds_its_last_token(tiny_ckpt):
    """Any causal LM pools as vLLM pools it: GPT-2's last token, normalized."""
    llm = LLM(str(tiny_ckpt), runner="pooling")
    outputs = llm.embed(TEXTS[:4], use_tqdm=False)
    assert llm.engine.num_steps == 1
    for out in outputs:
        want = gpt2_last_hidden(tiny_ckpt, out.prompt_token_ids)
        assert len(out.outputs.embedding) == 64
        np.testing.assert_allclose(out.outputs.embedding, want, atol=1e-5)
    raw = llm.embed(TEXTS[0], pooling_params=PoolingParams(normalize=False), use_tqdm=False)[0]
    assert np.linalg.norm(raw.outputs.embedding) != pytest.approx(1.0)
    np.testing.assert_allclose(raw.outputs.embedding / np.linalg.norm(raw.outputs.embedding),
                               outputs[0].outputs.embedding, atol=1e-5)


def test_a_decoder_pools_the_mean_of_each_text_alone(llama_ckpt, tmp_path):
    """Mean pooling reads every row of the batched pass: each text's rows equal transformers'
    on that text alone (no text attends to another of its step)."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    model_dir = tmp_path / "mean"
    shutil.copytree(llama_ckpt("qwen2"), model_dir)
    (model_dir / "modules.json").write_text(json.dumps([
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling",
         "type": "sentence_transformers.models.Pooling"}]))
    (model_dir / "1_Pooling").mkdir()
    (model_dir / "1_Pooling" / "config.json").write_text(json.dumps({"pooling_mode": "mean"}))
    llm = LLM(str(model_dir), runner="pooling")
    outputs = llm.embed(TEXTS[:4], use_tqdm=False)
    assert llm.engine.num_steps == 1
    model = transformers.AutoModel.from_pretrained(model_dir).eval()
    for out in outputs:
        with torch.no_grad():
            hidden = model(torch.tensor([out.prompt_token_ids])).last_hidden_state[0].mean(0)
        assert cosines(out.outputs.embedding, hidden.numpy()) >= 0.99999


def test_a_decoders_pooling_step_is_one_forward_pass(llama_ckpt):
    """The step's texts run side by side in one call of the model's forward pass, whatever
    their number, and their embeddings equal those of each text on its own."""
    from dataclasses import replace

    llm = LLM(str(llama_ckpt("qwen3")), runner="pooling")
    runner = llm.engine.runner
    calls = []

    def counted(*args, **kwargs):
        calls.append(len(args[2]))  # the step's tokens
        return forward(*args, **kwargs)

    forward = runner.family.forward
    runner.family = replace(runner.family, forward=counted)
    together = llm.embed(TEXTS, use_tqdm=False)
    assert llm.engine.num_steps == 1 and len(calls) == 1
    assert calls[0] == sum(len(o.prompt_token_ids) for o in together)
    alone = [llm.embed(text, use_tqdm=False)[0] for text in TEXTS]
    assert len(calls) == 1 + len(TEXTS)
    for a, b in zip(together, alone):
        np.testing.assert_allclose(a.outputs.embedding, b.outputs.embedding, atol=1e-5)


def test_the_qwen3_embedding_preset_pools_its_last_token(tmp_path):
    from nanovllm.model.checkpoint.dummy import write_dummy_checkpoint

    model_dir = write_dummy_checkpoint(tmp_path / "q", "qwen3-embedding-0.6b", num_hidden_layers=1,
                                       hidden_size=64, intermediate_size=96, num_attention_heads=4,
                                       num_kv_heads=2, head_size=16, vocab_size=2048)
    llm = LLM(str(model_dir), runner="pooling")
    assert llm.engine.pooling.modes == ("lasttoken",) and llm.engine.pooling.normalize
    out = llm.embed(["Hello world", "Hello"], use_tqdm=False)
    assert len(out[0].outputs.embedding) == 64
    np.testing.assert_allclose(np.linalg.norm(out[0].outputs.embedding), 1, atol=1e-5)


def test_runner_auto_pools_a_decoder_saved_by_sentence_transformers(tmp_path, tiny_ckpt):
    """As vLLM's `--runner auto`: a causal LM whose modules.json has a Pooling module is an
    embedding model (Qwen3-Embedding's architecture is Qwen3ForCausalLM); without one it
    generates, and `runner="generate"` makes it generate anyway."""
    from nanovllm.model.checkpoint.dummy import write_dummy_checkpoint

    model_dir = write_dummy_checkpoint(tmp_path / "q", "qwen3-embedding-0.6b", num_hidden_layers=1,
                                       hidden_size=64, intermediate_size=96, num_attention_heads=4,
                                       num_kv_heads=2, head_size=16, vocab_size=2048)
    auto = LLM(str(model_dir))
    assert auto.engine.pooling is not None and auto.engine.pooling.modes == ("lasttoken",)
    explicit = LLM(str(model_dir), runner="pooling")
    np.testing.assert_allclose(auto.embed(["Hello world"], use_tqdm=False)[0].outputs.embedding,
                               explicit.embed(["Hello world"], use_tqdm=False)[0].outputs.embedding,
                               atol=1e-6)
    assert LLM(str(model_dir), runner="generate").engine.pooling is None
    assert LLM(str(tiny_ckpt)).engine.pooling is None

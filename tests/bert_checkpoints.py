"""Tiny BERT checkpoints written by transformers and sentence-transformers (the tests'
references), importable from every test folder (`tests/` is on sys.path through its conftest).
Norms and biases are random: an init of ones and zeros would hide a dropped one."""

from __future__ import annotations

from pathlib import Path

BERT_TINY = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                 intermediate_size=48, max_position_embeddings=64, vocab_size=1000,
                 initializer_range=0.2)
TEXTS = ["Hello world", "The cat sat on the mat.", "a", "Hello world",
         "Encoders read the whole text at once, both ways.", "the dog and the cat"]
PAIRS = [("what is the capital of france", "Paris is the capital of France."),
         ("what is the capital of france", "The cat sat on the mat."),
         ("hello", "world"), ("a question", "an answer that is somewhat longer than the question")]


def _randomize(model, seed: int) -> None:
    import torch

    torch.manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "LayerNorm.weight" in name:
                p.copy_(1 + 0.2 * torch.randn_like(p))
            elif name.endswith(".bias"):
                p.copy_(0.1 * torch.randn_like(p))


def write_hf_bert(out, *, classifier_labels: int = 0, seed: int = 0, **overrides) -> Path:
    """A BertModel (or, with `classifier_labels`, a BertForSequenceClassification) with our
    WordPiece tokenizer, written by transformers."""
    import transformers

    from nanovllm.model.checkpoint.wordpiece import write_wordpiece_tokenizer

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    options = {**BERT_TINY, **overrides}
    write_wordpiece_tokenizer(out, options["vocab_size"], options["max_position_embeddings"])
    if classifier_labels:
        config = transformers.BertConfig(**options, num_labels=classifier_labels)
        model = transformers.BertForSequenceClassification(config).eval()
    else:
        model = transformers.BertModel(transformers.BertConfig(**options)).eval()
    _randomize(model, seed)
    model.save_pretrained(out)
    return out


def write_st_embedder(out, pooling: str = "mean", normalize: bool = True, seed: int = 0,
                      **overrides) -> Path:
    """A sentence-transformers embedding model (Transformer, Pooling, optionally Normalize)
    saved by sentence-transformers itself."""
    import warnings

    from sentence_transformers import SentenceTransformer

    with warnings.catch_warnings():  # (the old module path, which every version still has)
        warnings.simplefilter("ignore", DeprecationWarning)
        from sentence_transformers import models
    out = Path(out)
    hf = write_hf_bert(out.with_name(out.name + "-hf"), seed=seed, **overrides)
    modules = [models.Transformer(str(hf)),
               models.Pooling(BERT_TINY["hidden_size"], pooling)]
    if normalize:
        modules.append(models.Normalize())
    SentenceTransformer(modules=modules, device="cpu").save(str(out))
    return out

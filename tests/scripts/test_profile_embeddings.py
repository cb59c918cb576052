"""scripts/lab/profile_embeddings.py: a short real run on a small BERT checkpoint."""

from __future__ import annotations

import re

import pytest
from bert_checkpoints import write_st_embedder

from nanovllm.scripts.lab import profile_embeddings

pytest.importorskip("torch")


def test_profile_embeddings_times_each_piece_against_torch(tmp_path, capsys):
    model_dir = write_st_embedder(tmp_path / "st", max_position_embeddings=64)
    assert profile_embeddings.main(["--model", str(model_dir), "--texts", "3",
                                    "--input-len", "20", "--reps", "1"]) == 0
    out = capsys.readouterr().out
    for piece in ("QKV projection", "attention", "output projection \\+ residual", "layer norm",
                  "up projection \\+ GELU", "down projection \\+ residual", "layer"):
        assert re.search(rf"^{piece} +[\d.]+ +[\d.]+ +[\d.]+$", out, re.M), piece


def test_refuses_a_decoder(tiny_ckpt, capsys):
    assert profile_embeddings.main(["--model", str(tiny_ckpt), "--reps", "1"]) == 2
    assert "not a BERT encoder" in capsys.readouterr().err

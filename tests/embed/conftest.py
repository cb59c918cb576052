"""Checkpoints for the pooling tests, written once a session by transformers and
sentence-transformers: an embedding model and a cross-encoder."""

from __future__ import annotations

import pytest
from bert_checkpoints import write_hf_bert, write_st_embedder


@pytest.fixture(scope="session")
def st_embedder(tmp_path_factory):
    return write_st_embedder(tmp_path_factory.mktemp("embed") / "st", pooling="mean")


@pytest.fixture(scope="session")
def cross_encoder(tmp_path_factory):
    return write_hf_bert(tmp_path_factory.mktemp("rerank") / "ce", classifier_labels=1, seed=3)

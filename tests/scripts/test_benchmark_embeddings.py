"""`nanovllm bench embeddings`: a real run against sentence-transformers on a small checkpoint,
its JSON, and what it refuses (a generating model, texts longer than the context)."""

from __future__ import annotations

import json

import pytest
from bert_checkpoints import write_st_embedder

from nanovllm.cli import build_parser, main
from nanovllm.model.architectures.bert_config import BertConfig

pytest.importorskip("sentence_transformers")


def test_real_run_against_sentence_transformers_and_json(tmp_path, capsys):
    model_dir = write_st_embedder(tmp_path / "st", max_position_embeddings=64)
    out = tmp_path / "bench.json"
    code = main(["bench", "embeddings", "--model", str(model_dir), "--batch-sizes", "1,4",
                 "--input-len", "16", "--reps", "2", "--json", str(out)])
    assert code == 0
    table = capsys.readouterr().out
    assert "sentence-transformers texts/s" in table and "ratio" in table
    assert "roof (measured): float32" in table and table.count("(of roof)") == 2
    report = json.loads(out.read_text())
    results, roof = report["results"], report["roof"]
    assert [r["batch"] for r in results] == [1, 4]
    assert all(r["ratio"]["median"] > 0 and len(r["nanovllm_texts_per_s"]["runs"]) == 2
               for r in results)
    assert roof["float32_multiply_adds_per_s"] > 0
    assert roof["multiply_adds_per_text"] == BertConfig.from_json(
        model_dir / "config.json").text_multiply_adds(16)
    for r in results:
        for side, texts in (("nanovllm", "nanovllm_texts_per_s"), ("st", "st_texts_per_s")):
            assert r[f"{side}_multiply_adds_per_s"] == pytest.approx(
                r[texts]["median"] * roof["multiply_adds_per_text"])
            assert 0 < r[f"{side}_of_roof"] < 1.5  # nobody passes the machine's roof by much


def test_refuses_what_it_cannot_measure(tmp_path, tiny_ckpt, capsys):
    model_dir = write_st_embedder(tmp_path / "st", max_position_embeddings=64)
    assert main(["bench", "embeddings", "--model", str(model_dir), "--input-len", "100",
                 "--no-compare"]) == 2
    assert "--input-len 100" in capsys.readouterr().err
    assert main(["bench", "embeddings", "--model", str(tiny_ckpt), "--no-compare"]) == 2
    assert "not an embedding model" in capsys.readouterr().err


def test_defaults_are_the_issue_s_cells():
    args = build_parser().parse_args(["bench", "embeddings"])
    assert (args.model, args.batch_sizes, args.input_len) == ("all-minilm-l6-v2", [1, 32], 128)

"""`nanovllm bench offline --lora-modules ...` runs both cells on real adapters and prints each
against the base model; a bad adapter is an error line, not a traceback."""

from __future__ import annotations

from nanovllm.cli import main


def test_bench_prints_both_cells(tiny_ckpt, lora_adapter, capsys):
    modules = [f"a{i}={lora_adapter('gpt2', seed=i)}" for i in (1, 2, 3)]
    code = main(["bench", "offline", "--model", str(tiny_ckpt), "--lora-modules", *modules,
                 "--input-len", "4", "--output-len", "3", "--reps", "1",
                 "--num-kv-blocks", "64"])
    out = capsys.readouterr().out
    assert code == 0
    assert "16 over 3 adapters" in out and "1, one adapter" in out and "ratio" in out


def test_bench_refuses_a_bad_adapter(tiny_ckpt, tmp_path, capsys):
    code = main(["bench", "offline", "--model", str(tiny_ckpt), "--lora-modules",
                 f"bad={tmp_path}", "--num-kv-blocks", "64"])
    assert code == 1
    assert "LoRA adapter 'bad'" in capsys.readouterr().err

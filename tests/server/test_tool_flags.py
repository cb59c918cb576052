"""`nanovllm serve`'s tool-calling and reasoning flags (vLLM's names): a wrong combination is a
one-line error before any model is loaded."""

from __future__ import annotations

import pytest

from nanovllm.cli import build_parser, main


@pytest.mark.parametrize(("flags", "message"), [
    (["--enable-auto-tool-choice"], "--enable-auto-tool-choice needs --tool-call-parser"),
    (["--structured-outputs-config", '{"backend": "xgrammar"}'], "llguidance"),
    (["--structured-outputs-config", '{"disable_any_whitespace": true}'],
     "'disable_any_whitespace' is not supported"),
])
def test_bad_combinations_are_one_line(tiny_ckpt, capsys, flags, message):
    assert main(["serve", str(tiny_ckpt), *flags]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err


def test_the_parsers_are_choices():
    args = build_parser().parse_args(["serve", "m", "--enable-auto-tool-choice",
                                      "--tool-call-parser", "pythonic", "--reasoning-parser",
                                      "qwen3", "--structured-outputs-config",
                                      '{"enable_in_reasoning": true}'])
    assert (args.tool_call_parser, args.reasoning_parser) == ("pythonic", "qwen3")
    with pytest.raises(SystemExit):
        build_parser().parse_args(["serve", "m", "--tool-call-parser", "nope"])


def test_the_ray_ingress_refuses_what_it_does_not_serve():
    pytest.importorskip("ray")
    from nanovllm.server.ray.app import build

    with pytest.raises(ValueError, match="--data-parallel-size"):
        build({"model": "gpt2", "reasoning-parser": "qwen3"})

"""Chat templates with tools for the random-weight test checkpoints (the hub is unreachable):
`HERMES_TEMPLATE` writes tools, calls and results the way Qwen2.5's template does (Hermes
format: <tools>, <tool_call>, <tool_response>), with Qwen3's `enable_thinking` switch.
Its tags are plain text to the tests' tokenizers, several tokens each.

`write_qwen3_chat` is the other way round: a tiny Qwen3 carrying Qwen3's own template
(chat_templates/qwen3.jinja) and a tokenizer with Qwen3's chat tokens, each tag one token."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

QWEN3_TEMPLATE_FILE = Path(__file__).parent / "chat_templates" / "qwen3.jinja"
# Qwen3's chat tokens after <|endoftext|>, in its order: the turn markers are special (dropped
# from decoded text), the tags are not (the parsers read them in the text).
QWEN3_SPECIALS = ("<|im_start|>", "<|im_end|>")
QWEN3_TAGS = ("<tool_call>", "</tool_call>", "<tool_response>", "</tool_response>",
              "<think>", "</think>")

HERMES_TEMPLATE = """\
{%- if tools %}
    {{- '<|im_start|>system\\n' }}
    {%- if messages[0].role == 'system' %}
        {{- messages[0].content + '\\n\\n' }}
    {%- endif %}
    {{- "# Tools\\n\\nYou may call one or more functions to assist with the user query.\\n\\n\
You are provided with function signatures within <tools></tools> XML tags:\\n<tools>" }}
    {%- for tool in tools %}
        {{- "\\n" }}
        {{- tool | tojson }}
    {%- endfor %}
    {{- "\\n</tools>\\n\\nFor each function call, return a json object with function name and \
arguments within <tool_call></tool_call> XML tags:\\n<tool_call>\\n{\\"name\\": <function-name>, \
\\"arguments\\": <args-json-object>}\\n</tool_call><|im_end|>\\n" }}
{%- elif messages[0].role == 'system' %}
    {{- '<|im_start|>system\\n' + messages[0].content + '<|im_end|>\\n' }}
{%- endif %}
{%- for message in messages %}
    {%- if message.role == "user" or (message.role == "system" and not loop.first) %}
        {{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>\\n' }}
    {%- elif message.role == "assistant" %}
        {{- '<|im_start|>' + message.role }}
        {%- if message.content %}
            {{- '\\n' + message.content }}
        {%- endif %}
        {%- for tool_call in message.tool_calls or [] %}
            {%- if tool_call.function is defined %}
                {%- set tool_call = tool_call.function %}
            {%- endif %}
            {{- '\\n<tool_call>\\n{"name": "' + tool_call.name + '", "arguments": ' }}
            {{- tool_call.arguments | tojson }}
            {{- '}\\n</tool_call>' }}
        {%- endfor %}
        {{- '<|im_end|>\\n' }}
    {%- elif message.role == "tool" %}
        {%- if loop.first or messages[loop.index0 - 1].role != "tool" %}
            {{- '<|im_start|>user' }}
        {%- endif %}
        {{- '\\n<tool_response>\\n' + message.content + '\\n</tool_response>' }}
        {%- if loop.last or messages[loop.index0 + 1].role != "tool" %}
            {{- '<|im_end|>\\n' }}
        {%- endif %}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|im_start|>assistant\\n' }}
    {%- if enable_thinking is defined and enable_thinking is false %}
        {{- '<think>\\n\\n</think>\\n\\n' }}
    {%- endif %}
{%- endif %}
"""


def with_chat_template(model_dir: Path, out: Path, template: str = HERMES_TEMPLATE) -> Path:
    """A copy of the checkpoint at `model_dir` whose tokenizer_config.json carries `template`."""
    shutil.copytree(model_dir, out, dirs_exist_ok=True)
    config_path = out / "tokenizer_config.json"
    config = json.loads(config_path.read_text())
    config["chat_template"] = template
    config_path.write_text(json.dumps(config, indent=2))
    return out


def write_hermes_llama(tmp_path_factory) -> Path:
    """A random grouped-query Llama whose template lists tools (HERMES_TEMPLATE), with a
    context long enough for a prompt that does."""
    from llama_checkpoints import write_hf_llama

    model = write_hf_llama(tmp_path_factory.mktemp("llama"), "Llama", max_position_embeddings=2048)
    return with_chat_template(model, tmp_path_factory.mktemp("hermes"))


def qwen3_template() -> str:
    """Qwen3's chat template (Qwen's, Apache-2.0), as the `chat_template` of Qwen/Qwen3-0.6B's
    tokenizer_config.json holds it (no trailing newline): the revision that reads a turn's
    content only when it is a string, so that an assistant turn of calls (content null) renders."""
    return QWEN3_TEMPLATE_FILE.read_text().rstrip("\n")


def write_qwen3_chat(tmp_path_factory, context: int = 2048, vocab_size: int | None = None,
                     tied: bool = True) -> Path:
    """A random Qwen3 (tiny dims, q/k norms, head_dim apart from hidden / heads) whose tokenizer
    has Qwen3's chat tokens as single tokens, ends a turn with <|im_end|> and adds no BOS, and
    whose tokenizer_config.json carries Qwen3's own chat template; `context` positions, and
    `vocab_size` ids (GPT-2's 50,257 and the chat tokens make long prompts short; default the
    tiny Llama's); `tied`: the output layer shares the token embeddings, as Qwen3's small ones do."""
    import transformers
    from llama_checkpoints import LLAMA_VARIANTS, write_hf_llama
    from tokenizers import AddedToken, Tokenizer

    from nanovllm.model.checkpoint.dummy import cache_root
    from nanovllm.model.checkpoint.tokenizer_files import EOT, write_tokenizer

    out = tmp_path_factory.mktemp("qwen3")
    family, options = LLAMA_VARIANTS["qwen3"]
    options = {**options, "max_position_embeddings": context, "tie_word_embeddings": tied}
    write_hf_llama(out, family, **options, **({"vocab_size": vocab_size} if vocab_size else {}))
    vocab = transformers.AutoConfig.from_pretrained(out).vocab_size
    for name in ("tokenizer.json", "tokenizer_config.json"):  # the Llama 3 style ones
        (out / name).unlink()
    base = vocab - len(QWEN3_SPECIALS) - len(QWEN3_TAGS)
    write_tokenizer(out, base, context, cache_root() / "tokenizers")
    for name in ("vocab.json", "merges.txt"):  # tokenizer.json alone: these lack the chat tokens
        (out / name).unlink(missing_ok=True)
    tok = Tokenizer.from_file(str(out / "tokenizer.json"))
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in QWEN3_SPECIALS])
    tok.add_tokens([AddedToken(t, special=False, normalized=False) for t in QWEN3_TAGS])
    tok.save(str(out / "tokenizer.json"))
    end, eot = tok.token_to_id("<|im_end|>"), tok.token_to_id(EOT)
    config = {"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": None,
              "eos_token": "<|im_end|>", "pad_token": EOT, "model_max_length": context,
              "clean_up_tokenization_spaces": False, "chat_template": qwen3_template()}
    (out / "tokenizer_config.json").write_text(json.dumps(config, indent=2))
    for name, eos in (("config.json", end), ("generation_config.json", [end, eot])):
        data = json.loads((out / name).read_text())
        data.update(bos_token_id=eot, eos_token_id=eos)
        (out / name).write_text(json.dumps(data, indent=2))
    return out


def write_terse_qwen3(tmp_path_factory, context: int, eos_logit: float = 9.0) -> Path:
    """A Qwen3 like write_qwen3_chat's, with GPT-2's vocabulary (a long agent prompt stays
    short), whose answers end after a few tokens, as a coding agent's test needs (its clients
    ask for 32,000 tokens, or none): every token embedding carries a large constant in
    dimension 0, which dominates the residual stream, so the final norm's output there is about
    the same positive number after any prompt; the untied output layer reads dimension 0 only
    for EOS, whose logit is then about `eos_logit` over every other token's near-zero one."""
    from safetensors.numpy import load_file, save_file

    out = write_qwen3_chat(tmp_path_factory, context=context, vocab_size=50265, tied=False)
    weights = load_file(out / "model.safetensors")
    embed, head = weights["model.embed_tokens.weight"], weights["lm_head.weight"]
    constant = 50.0  # against embeddings of about 0.1: the residual stream's rms is ~constant/8
    embed[:, 0] = constant
    eos = json.loads((out / "config.json").read_text())["eos_token_id"]
    head[:, 0] = 0.0
    rms = constant / embed.shape[1] ** 0.5
    head[eos, 0] = eos_logit / (constant / rms * weights["model.norm.weight"][0])
    save_file(weights, out / "model.safetensors", metadata={"format": "pt"})
    return out


def write_tool_calling_qwen3(tmp_path_factory, context: int) -> Path:
    """A Qwen3 like write_terse_qwen3's, built by hand so that a coding agent's turn is one
    round trip through the agent's own tools: its first answer is an empty reasoning and one
    tool call, and its answer once the tool's result is in the prompt is "Done". Every weight
    is zero but these, which give the logits a token sets (its embedding marks one dimension of
    the residual stream; the head reads it after the final norm):

    - dim 0, a constant in every token, gives the quote a lead over the rest, the closing
      brackets a lesser one, so the JSON the lazy tool-call grammar holds a call to ends fast
      (empty strings, no optional properties, arrays of one empty string at most), the call's
      end tag and the newline before it less again (the grammar's text as the tokens the
      template writes), and "Read"/"read" the least (a tool of that name, where offered);
    - a newline (the assistant header's last token) leads to <think>, <think> to </think>
      (the grammar holds the answer from the reasoning's end on), </think> to <tool_call>, or
      to "Done" when dim 3 is set; </tool_call> and "Done" lead to EOS;
    - dim 3 is layer 0's attention (queries and keys zero, so it averages over the prompt) of
      the <tool_response> mark: above zero exactly when a tool's result is in the prompt, and
      then it drives <tool_call>'s logit far below every other."""
    import numpy as np
    from safetensors.numpy import load_file, save_file
    from tokenizers import Tokenizer

    out = write_qwen3_chat(tmp_path_factory, context=context, vocab_size=50265, tied=False)
    weights = {name: np.zeros_like(w) for name, w in load_file(out / "model.safetensors").items()}
    tok = Tokenizer.from_file(str(out / "tokenizer.json"))
    ids = {text: tok.encode(text, add_special_tokens=False).ids for text in
           ("\n", '"', ' ""', "}", "]", "Read", "read", "Done", "<think>", "</think>",
            "<tool_call>", "</tool_call>", "<tool_response>")}
    assert all(len(i) == 1 for i in ids.values()), ids
    one = {text: i[0] for text, i in ids.items()}
    one["EOS"] = json.loads((out / "config.json").read_text())["eos_token_id"]
    for name, w in weights.items():
        if name.endswith("norm.weight"):
            w[:] = 1.0
    # (token, its mark's dimension, the token it leads to and that one's logit)
    marks = [("\n", 1, "<think>", 40.0), ("<think>", 2, "</think>", 60.0),
             ("</think>", 4, "<tool_call>", 40.0), ("</think>", 4, "Done", 30.0),
             ("</tool_call>", 5, "EOS", 60.0), ("Done", 6, "EOS", 60.0)]
    seen, result = 3, 7  # dim 3 reads the <tool_response> mark (dim 7) in the prompt
    big = 50.0  # a mark's size in the embedding, as large as the constant
    embed = weights["model.embed_tokens.weight"]  # [vocab, hidden]
    embed[:, 0] = big
    for text, dim, _, _ in marks + [("<tool_response>", result, None, None)]:
        embed[one[text], dim] = big
    hidden = embed.shape[1]
    plain = big / (big / hidden ** 0.5)  # dim 0 after the norm, in a token without a mark
    marked = big / (2 * big ** 2 / hidden) ** 0.5  # either dim after the norm, in a marked one
    # Layer 0 (kv head 0's first value dim, query head 0's output): the mark, 1.0, to dim 3.
    weights["model.layers.0.self_attn.v_proj.weight"][0, result] = 1.0 / marked
    weights["model.layers.0.self_attn.o_proj.weight"][seen, 0] = 1.0
    head = weights["lm_head.weight"]  # [vocab, hidden]
    for text, logit in (('"', 30.0), (' ""', 30.0), ("}", 25.0), ("]", 25.0),
                        ("</tool_call>", 22.0), ("\n", 22.0), ("Read", 20.0), ("read", 20.0)):
        head[one[text], 0] = logit / plain
    for _, dim, then, logit in marks:
        head[one[then], dim] = logit / marked
    # One result in the longest prompt leaves dim 3 at least this after the final norm.
    least = 1.0 / context / (big / hidden ** 0.5)
    head[one["<tool_call>"], seen] = -100.0 / least
    save_file(weights, out / "model.safetensors", metadata={"format": "pt"})
    return out

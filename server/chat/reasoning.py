"""Reasoning output (`--reasoning-parser`): what a model writes between `<think>` and `</think>`
becomes the message's `reasoning_content`, the rest its `content` (vLLM's names).

- deepseek_r1: the answer starts in reasoning (DeepSeek-R1's template opens `<think>` in the
  prompt, so the output may hold only the closing tag); without `</think>` it is all reasoning.
- qwen3: reasoning only when the output opens it with `<think>` (Qwen3 with
  `enable_thinking: false` writes none: its template closes an empty block in the prompt).

Either way, what the prompt's own generation prompt says wins: a prompt that ends inside an open
`<think>` starts the output in reasoning, one that closed it starts it in the answer. Tags are
found in the text, so a tokenizer that splits them into several tokens changes nothing; a
stream holds back a tag cut off at its end until it is decided.
"""

from __future__ import annotations

from dataclasses import dataclass

from nanovllm.server.chat.tool_calls.partial import held_back, is_undecided_prefix

START, END = "<think>", "</think>"


@dataclass(frozen=True, slots=True)
class ReasoningParser:
    name: str
    needs_start: bool  # reasoning only when the output opens it (qwen3)
    start: str = START
    end: str = END

    def opened_by(self, generation_prompt: str) -> bool | None:
        """Where the generation prompt (the text the template adds for the answer) leaves the
        model: inside reasoning (True), after it (False), or neither said (None)."""
        opened, closed = generation_prompt.rfind(self.start), generation_prompt.rfind(self.end)
        if closed >= 0 and closed > opened:
            return False
        return True if opened >= 0 else None

    def split(self, text: str, final: bool, opened: bool | None) -> tuple[str | None, int | None]:
        """(the reasoning so far, or None when there is none; where the answer starts in
        `text`, or None while reasoning, or undecided). Not final, a cut-off tag is held back."""
        if opened is False:
            return None, 0
        if not final and is_undecided_prefix(text, self.start):
            return "", None
        body = len(text) - len(text.lstrip())
        if text.startswith(self.start, body):
            body += len(self.start)
        elif self.needs_start and opened is None:
            return None, 0
        else:
            body = 0
        end = text.find(self.end, body)
        if end >= 0:
            return text[body:end], end + len(self.end)
        reasoning = text[body:]
        if not final:
            reasoning = reasoning[:len(reasoning) - held_back(reasoning, (self.end,))]
        return reasoning, None


REASONING_PARSERS = {p.name: p for p in (ReasoningParser("deepseek_r1", needs_start=False),
                                         ReasoningParser("qwen3", needs_start=True))}

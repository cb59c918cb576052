"""The chat path, shared by every API over it: a chat request (request.py) rendered into one
prompt by the chat template (template.py), planned (plan.py: grammar, tool choice), run
(run.py), its text read as a message (output.py: reasoning.py, then tool_calls/) and given as
values (result.py) for each API to render."""

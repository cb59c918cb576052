"""The chat path: a chat request (request.py) rendered into one prompt by the chat template
(template.py), planned (plan.py: grammar, tool choice), and its answer read back (output.py:
reasoning.py, then tool_calls/), shared by every API over it."""

"""What the server does with a request field it does not implement, decided by what the field
does, never by whether the server knows its name:

- **refused**: it would change the output in a way the server cannot honour. A 400 naming the
  field, in the API's own error shape and wording.
- **ignored**: metadata, client housekeeping and hints (ids and tags, cache and routing hints,
  switches for what the server does anyway). Accepted, logged once per field name at debug
  level, and listed in docs/api.md.

A field the request model declares is honoured (its endpoint may still refuse a value it
cannot honour, naming the field). Each API keeps its policy beside its request model: the
refused and ignored fields, each with its reason, and the class of a field nobody has decided
yet:

- /v1/completions and /v1/chat/completions (server/protocol.py's UNSUPPORTED_FIELDS and
  IGNORED_EXTRA_FIELDS, the chat route's UNSUPPORTED_CHAT_FIELDS): refused. They are sampling
  APIs, which other servers extend with options that change the output: an unknown name is
  most likely one. So are the pooling APIs.
- /v1/messages and /v1/responses (a `FieldPolicy` each, in server/api/<name>/protocol.py):
  ignored, and logged once per name at warning level, so that an operator sees what nobody
  decided. Their clients are the vendors' own agents: the new top-level fields each release
  brings have been housekeeping (`context_management`, `client_metadata`, `diagnostics`,
  `speed`...), while what changes the output arrives as new values of known fields (a content
  block, a tool type, a thinking mode), which the front ends refuse by name; the top-level
  fields known to change the output are in `refused`.

The next field is decided here: its API's refused or ignored table, with the reason, and the
same line in docs/api.md ("Fields, by what they do").
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field

from nanovllm.server.errors import bad_request

logger = logging.getLogger(__name__)

# A value that asks for nothing: such a field passes whatever its class.
NOTHING = (None, False, [], {}, 0, "")


@dataclass(frozen=True, slots=True)
class FieldPolicy:
    api: str  # the API's path, for the log
    refused: Mapping[str, str]  # name -> why the server cannot honour it (the 400 says it)
    ignored: Mapping[str, str]  # name -> why it changes nothing here (docs/api.md says it)
    unknown_ignored: bool  # the class of a field in neither (see the module's docstring)
    refusal: str = "`{field}` is not supported: {reason}."  # the API's wording of a 400

    def check(self, extra: Mapping, log: IgnoredFields) -> None:
        """`extra`: the request's fields its model does not declare. The first refused one is
        a 400 naming it; the ignored ones are logged."""
        for name in sorted(k for k, v in extra.items() if v not in NOTHING):
            if name in self.refused:
                self._refuse(name, self.refused[name])
            if name in self.ignored:
                log.note(self.api, name, decided=True)
            elif self.unknown_ignored:
                log.note(self.api, name, decided=False)
            else:
                self._refuse(name, "this server does not know what it would change, so it "
                                   "refuses it rather than ignore it (docs/api.md lists the "
                                   "fields it takes)")

    def _refuse(self, name: str, reason: str):
        raise bad_request(self.refusal.format(field=name[:100], reason=reason), name[:100])


@dataclass(slots=True)
class IgnoredFields:
    """The ignored field names already logged, per API: each is logged once per server (one
    per ServerContext)."""

    _seen: set[tuple[str, str]] = field(default_factory=set)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def first(self, api: str, name: str) -> bool:
        """True the first time `name` is seen on `api`: the time to log it."""
        with self._lock:
            if (api, name) in self._seen:
                return False
            self._seen.add((api, name))
            return True

    def note(self, api: str, name: str, decided: bool) -> None:
        if not self.first(api, name):
            return
        if decided:
            logger.debug("%s: ignoring the field %r (it changes nothing here; docs/api.md)",
                         api, name)
        else:
            logger.warning("%s: ignoring the unknown field %r (the API's default for a field "
                           "nobody decided: server/field_policy.py)", api, name[:100])

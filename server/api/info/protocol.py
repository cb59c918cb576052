"""GET /version: its answer's model."""

from __future__ import annotations

from pydantic import BaseModel


class VersionResponse(BaseModel):
    version: str

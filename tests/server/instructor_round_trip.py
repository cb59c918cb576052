"""instructor in TOOLS mode against a server, run in instructor's own venv (test_agents.py):
prints, as JSON, the answer and the requests instructor sent (its `completion:kwargs` hook).

Usage: python instructor_round_trip.py BASE_URL MODEL
"""

import json
import sys
from typing import Literal

import instructor
from openai import OpenAI
from pydantic import BaseModel, ConfigDict, Field, field_validator

refused = []


class Weather(BaseModel):
    # extra="forbid": additionalProperties false (a random model would add keys forever)
    model_config = ConfigDict(extra="forbid")
    city: Literal["Paris", "Rome", "Oslo"]
    celsius: int = Field(ge=-50, le=50)

    @field_validator("celsius")
    @classmethod
    def refuse_the_first_answer(cls, value: int) -> int:
        if not refused:
            refused.append(value)
            raise ValueError("Measure again.")
        return value


def main(base_url: str, model: str) -> None:
    client = instructor.from_openai(OpenAI(base_url=base_url, api_key="unused", max_retries=0),
                                    mode=instructor.Mode.TOOLS)
    sent = []
    client.on("completion:kwargs", lambda *args, **kwargs: sent.append(kwargs))
    weather = client.chat.completions.create(
        model=model, response_model=Weather, max_retries=2, max_tokens=80, temperature=1.0,
        seed=6, messages=[{"role": "user", "content": "Weather in Oslo?"}])
    print(json.dumps({"weather": weather.model_dump(), "refused": refused, "sent": sent},
                     default=lambda o: o.model_dump() if hasattr(o, "model_dump") else repr(o)))


if __name__ == "__main__":
    main(*sys.argv[1:])

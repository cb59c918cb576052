"""The tools the tool-calling tests offer the model (imported as `tool_specs`)."""

from __future__ import annotations

TIME = {"type": "function", "function": {
    "name": "get_time", "parameters": {"type": "object", "additionalProperties": False,
                                       "required": ["zone"],
                                       "properties": {"zone": {"enum": ["CET", "UTC"]}}}}}


def weather_tool(city: dict) -> dict:
    """get_weather(city, days), the city's JSON schema `city`, days 1 to 7."""
    return {"type": "function", "function": {
        "name": "get_weather", "description": "The weather in a city.",
        "parameters": {"type": "object", "additionalProperties": False,
                       "required": ["city", "days"],
                       "properties": {"city": city,
                                      "days": {"type": "integer", "minimum": 1, "maximum": 7}}}}}

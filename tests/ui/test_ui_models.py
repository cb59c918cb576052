"""The web page with several models (`nanovllm serve A --model B`): the picker, and the page's
routes' `?model=` over real HTTP and in a real browser (chromium through playwright)."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
from ui_helpers import ServeProcess, start_server

from nanovllm.model import write_dummy_checkpoint
from tests.conftest import TINY

OTHER = "other-tiny"  # the second model's directory, so its name


@pytest.fixture(scope="module")
def two_models(tiny_ckpt, tmp_path_factory) -> Iterator[ServeProcess]:
    other = write_dummy_checkpoint(tmp_path_factory.mktemp("ui-models") / OTHER, "gpt2",
                                   **TINY)
    server = start_server(tiny_ckpt, "--model", str(other), "--keep-alive", "-1")
    yield server
    server.stop()


def error_of(response: httpx.Response, status: int) -> dict:
    assert response.status_code == status, response.text
    err = response.json()["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["code"] == status
    return err


def states(url: str) -> dict[str, str]:
    return {m["id"]: m["state"] for m in httpx.get(f"{url}/v1/models").json()["data"]}


def test_the_page_routes_take_the_model(two_models, tiny_ckpt):
    """`?model=` names the model each /ui/api/ route looks at: an unknown one is a 404 naming
    the field, an unloaded one's views say so (409) without loading it, a loaded one's
    answer is its own."""
    url = two_models.url
    for path in ("/ui/api/info", "/ui/api/engine"):
        err = error_of(httpx.get(f"{url}{path}", params={"model": "no-such"}), 404)
        assert err["param"] == "model" and "no-such" in err["message"]
    err = error_of(httpx.post(f"{url}/ui/api/attention", params={"model": "no-such"},
                              json={"prompt": "hi"}), 404)
    assert err["param"] == "model"

    assert states(url)[OTHER] == "unloaded"
    info = httpx.get(f"{url}/ui/api/info", params={"model": OTHER}).json()
    assert (info["model"], info["state"], info["inspection"]) == (OTHER, "unloaded", False)
    err = error_of(httpx.get(f"{url}/ui/api/engine", params={"model": OTHER}), 409)
    assert err["param"] == "model" and "not loaded" in err["message"]
    err = error_of(httpx.post(f"{url}/ui/api/trace", params={"model": OTHER},
                              json={"prompt": "hi"}), 409)
    assert states(url)[OTHER] == "unloaded"  # looking did not load it

    httpx.post(f"{url}/v1/completions", timeout=300,
               json={"model": OTHER, "prompt": "hi", "max_tokens": 1}).raise_for_status()
    info = httpx.get(f"{url}/ui/api/info", params={"model": OTHER}).json()
    assert (info["model"], info["state"], info["inspection"]) == (OTHER, "loaded", True)
    snap = httpx.get(f"{url}/ui/api/engine", params={"model": OTHER}, timeout=30)
    assert snap.status_code == 200 and snap.json()["num_steps"] >= 1
    first = httpx.get(f"{url}/ui/api/info").json()  # no model: the first one served
    assert first["model"] == tiny_ckpt.name


def test_the_picker_chooses_the_model_the_playground_asks(page, two_models, tiny_ckpt):
    from playwright.sync_api import expect

    page.goto(f"{two_models.url}/ui")
    picker = page.locator("#model-pick")
    expect(picker).to_be_visible()
    expect(picker.locator("option")).to_have_count(2)
    expect(picker).to_have_value(tiny_ckpt.name)
    picker.select_option(OTHER)
    expect(page.locator("#model")).to_contain_text(OTHER)
    page.fill("#gen-form [name=max_tokens]", "3")
    page.click("#generate")
    expect(page.locator("#status")).to_have_text("done", timeout=300_000)
    expect(page.locator("[data-stat=model]")).to_have_text(OTHER)
    expect(picker.locator(f"option[value='{OTHER}']")).to_have_text(f"{OTHER} (loaded)")
    page.click("[aria-controls=engine]")  # its engine view: the chosen model's engine
    expect(page.locator("[data-engine=step]")).not_to_have_text("–", timeout=30_000)
    picker.select_option(tiny_ckpt.name)  # not loaded: said, and nothing of the other's drawn
    expect(page.locator("#engine-status")).to_contain_text("is not loaded")
    expect(page.locator("[data-engine=step]")).to_have_text("–")
    expect(page.locator("#blocks .block")).to_have_count(0)

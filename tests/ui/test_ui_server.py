"""The web page's server side over real HTTP: the files, /ui/api/info, the API-key rule and
--disable-ui. (The page's behaviour in a browser: test_ui_browser.py.)"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import httpx
import pytest
from ui_helpers import API_KEY, start_server

from nanovllm.server.ui.routes import STATIC_DIR


def error_of(response: httpx.Response, status: int) -> dict:
    assert response.status_code == status, response.text
    err = response.json()["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["code"] == status
    return err


def test_page_and_its_files_are_served(open_server):
    page = httpx.get(f"{open_server.url}/ui")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "default-src 'self'" in page.headers["content-security-policy"]
    for name, kind in [("app.js", "javascript"), ("style.css", "text/css")]:
        assert f"/ui/static/{name}" in page.text
        got = httpx.get(f"{open_server.url}/ui/static/{name}")
        assert got.status_code == 200 and kind in got.headers["content-type"]
        assert got.text == (STATIC_DIR / name).read_text()


SVG_NAMESPACE = "http://www.w3.org/2000/svg"  # document.createElementNS's namespace name


def test_the_page_loads_nothing_from_elsewhere():
    """It must work offline: no CDN, no font service, every URL our own."""
    for path in STATIC_DIR.iterdir():
        text = path.read_text().replace(SVG_NAMESPACE, "")  # a name, never fetched
        urls = re.findall(r"(?:https?:)?//[\w.-]+\.\w+", text)
        assert urls == [], f"{path.name} refers to {urls}"


def test_the_wheel_ships_the_page(tmp_path):
    """`pip install .` must install server/ui/static/ (setuptools package-data), not only *.py."""
    repo, src = Path(__file__).resolve().parents[2], tmp_path / "src"
    src.mkdir()
    for name in ["pyproject.toml", "README.md"]:
        shutil.copy(repo / name, src / name)
    for package in ["nanovllm", "model", "runner", "server", "scripts"]:
        shutil.copytree(repo / package, src / package,
                        ignore=shutil.ignore_patterns("__pycache__"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps",
                    "--no-build-isolation", "--wheel-dir", str(tmp_path), str(src)],
                   check=True, capture_output=True)
    [wheel] = tmp_path.glob("nanovllm-*.whl")
    shipped = set(zipfile.ZipFile(wheel).namelist())
    for path in STATIC_DIR.iterdir():
        assert f"nanovllm/server/ui/static/{path.name}" in shipped


def test_info_says_what_is_served(open_server, tiny_ckpt):
    info = httpx.get(f"{open_server.url}/ui/api/info").json()
    assert info["model"] == info["root"] == tiny_ckpt.name  # a name, never the local path
    assert info["is_dummy"] is True  # the tiny checkpoint has random weights
    assert info["architecture"] == "GPT2LMHeadModel"
    assert info["max_model_len"] == 256 and info["vocab_size"] == 1024
    assert info["max_logprobs"] == 20 and info["max_n"] >= 1


def test_with_an_api_key_the_data_needs_it_and_the_page_does_not(auth_server):
    url = auth_server.url
    err = error_of(httpx.get(f"{url}/ui/api/info"), 401)
    assert "API key" in err["message"]
    error_of(httpx.get(f"{url}/ui/api/info", headers={"Authorization": "Bearer wrong"}), 401)
    good = httpx.get(f"{url}/ui/api/info", headers={"Authorization": f"Bearer {API_KEY}"})
    assert good.status_code == 200 and good.json()["is_dummy"] is True
    # The page and its files hold no secret: they load, then ask for the key.
    assert httpx.get(f"{url}/ui").status_code == 200
    assert httpx.get(f"{url}/ui/static/app.js").status_code == 200


@pytest.fixture(scope="module")
def disabled_server(tiny_ckpt):
    server = start_server(tiny_ckpt, "--disable-ui")
    yield server
    server.stop()


def test_disable_ui_gives_404_and_leaves_the_api(disabled_server):
    url = disabled_server.url
    for path in ["/ui", "/ui/static/app.js", "/ui/api/info"]:
        error_of(httpx.get(f"{url}{path}"), 404)
    assert httpx.get(f"{url}/v1/models").status_code == 200
    assert "Web page at" not in disabled_server.log


def test_serve_logs_where_the_page_is(open_server):
    assert f"Web page at {open_server.url}/ui" in open_server.log

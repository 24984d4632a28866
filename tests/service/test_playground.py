"""The playground page over HTTP (no browser): served at `GET /` with its assets, offline-only,
and without taking `POST /` away from TGI clients. The browser tests are in test_playground_browser.py."""

import re

import pytest

from service.frontend.routes.playground import PLAYGROUND_DIR

pytestmark = pytest.mark.anyio


async def test_get_root_serves_the_page_locked_to_this_server(client):
    response = await client.get("/")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    assert "<title>charlm playground</title>" in response.text
    policy = response.headers["content-security-policy"]
    assert "default-src 'self'" in policy  # nothing from a CDN or anywhere else can load


async def test_every_asset_the_page_names_is_served(client):
    page = (await client.get("/")).text
    assets = re.findall(r'(?:src|href)="(/playground/[^"]+)"', page)
    for script in PLAYGROUND_DIR.rglob("*.js"):  # modules import each other by relative path
        for name in re.findall(r'from "\./([\w.]+)"', script.read_text(encoding="utf-8")):
            assets.append(f"/playground/js/{name}")
    assert any(a.endswith(".css") for a in assets) and any(a.endswith("main.js") for a in assets)
    for asset in assets:
        response = await client.get(asset)
        assert response.status_code == 200, asset
        kind = "javascript" if asset.endswith(".js") else "css"
        assert kind in response.headers["content-type"], asset
        assert response.headers["cache-control"] == "no-cache", asset  # never stale after an upgrade


async def test_no_asset_refers_to_another_host():
    for path in PLAYGROUND_DIR.rglob("*"):
        if path.is_file():
            assert not re.search(r"https?://", path.read_text(encoding="utf-8")), path


async def test_post_root_is_still_tgi_generation(client):
    response = await client.post("/", json={"inputs": "the", "parameters": {"max_new_tokens": 3}})
    assert response.status_code == 200
    [answer] = response.json()
    assert len(answer["generated_text"]) == 3


async def test_the_page_needs_no_api_key_but_generation_does(serve):
    async with serve(api_key="secret") as (client, _):
        assert (await client.get("/")).status_code == 200
        assert (await client.get("/playground/js/main.js")).status_code == 200
        assert (await client.get("/v1/models")).status_code == 401


async def test_an_unknown_asset_is_a_404_in_tgi_shape(client):
    response = await client.get("/playground/nothing.js")
    assert response.status_code == 404
    assert set(response.json()) == {"error", "error_type"}

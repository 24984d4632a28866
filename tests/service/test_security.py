"""Security properties: the API key stays secret, requests cannot reach the filesystem, and
nothing the project loads is unpickled."""

from __future__ import annotations

import ast
from pathlib import Path

import httpx
import pytest

from tests.service.helpers import serve_process
from tests.service.test_errors import assert_openai_error, assert_tgi_error

ROOT = Path(__file__).resolve().parents[2]
KEY = "sk-charlm-test-9f8e7d6c5b4a"


def test_the_api_key_guards_generation_but_never_reaches_the_logs(tiny_models):
    args = ("--models-dir", str(tiny_models), "--default-model", "tiny-gpt", "--api-key", KEY, "--log-level", "debug")
    with serve_process(*args) as server:
        server.wait_healthy()
        body = {"inputs": "the", "parameters": {"max_new_tokens": 3}}
        good, wrong = {"authorization": f"Bearer {KEY}"}, {"authorization": f"Bearer {KEY[:-1]}x"}
        assert httpx.post(f"{server.url}/generate", json=body, headers=good).status_code == 200
        assert httpx.get(f"{server.url}/v1/models", headers=good).status_code == 200
        for route in ("/generate", "/generate_stream", "/", "/v1/completions"):
            for headers in (wrong, {}, {"authorization": KEY}):
                assert httpx.post(f"{server.url}{route}", json=body, headers=headers).status_code == 401
        for route in ("/v1/models", "/info"):
            assert httpx.get(f"{server.url}{route}", headers=wrong).status_code == 401
        for route in ("/health", "/metrics"):  # probes and scrapers carry no key
            assert httpx.get(f"{server.url}{route}").status_code == 200
        assert KEY not in httpx.get(f"{server.url}/info", headers=good).text
        server.process.terminate()
        server.process.wait(60)
        output = server.output()
    assert "401" in output  # refusals were logged...
    assert KEY not in output and KEY[:-1] not in output  # ...without the key or the wrong guess


@pytest.mark.anyio
@pytest.mark.parametrize("name", ["../tiny-gpt", "tiny-gpt/../tiny-lstm", "/etc/passwd", "./tiny-gpt", "tiny-gpt\x00"])
async def test_model_names_resolve_only_against_the_loaded_models(client, tiny_models, name):
    assert_tgi_error(await client.post("/generate", json={"inputs": "the", "model": name}), 404, "is not served")
    assert_openai_error(await client.post("/v1/completions", json={"prompt": "the", "model": name}), 404)
    absolute = str(tiny_models / "tiny-gpt")
    assert_tgi_error(await client.post("/generate", json={"inputs": "the", "model": absolute}), 404)


def python_files() -> list[Path]:
    return sorted(p for package in ("charlm", "training", "service", "bench") for p in (ROOT / package).rglob("*.py"))


def unpickling_calls(tree: ast.AST) -> list[str]:
    """torch.load without weights_only=True, pickle/dill/joblib anywhere, numpy loads that allow pickle."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            names = [a.name for a in node.names] + ([node.module] if isinstance(node, ast.ImportFrom) else [])
            found += [f"line {node.lineno}: imports {n}" for n in names
                      if n and n.split(".")[0] in {"pickle", "cPickle", "dill", "joblib", "shelve", "marshal"}]
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            keywords = {k.arg: k.value for k in node.keywords}
            trusted = keywords.get("weights_only")
            if node.func.attr == "load" and ast.unparse(node.func.value) == "torch" and not (
                isinstance(trusted, ast.Constant) and trusted.value is True
            ):
                found.append(f"line {node.lineno}: torch.load without weights_only=True")
            allow = keywords.get("allow_pickle")
            if isinstance(allow, ast.Constant) and allow.value is True:
                found.append(f"line {node.lineno}: allow_pickle=True")
    return found


def test_nothing_in_the_project_unpickles():
    problems = {str(p.relative_to(ROOT)): unpickling_calls(ast.parse(p.read_text())) for p in python_files()}
    assert {path: found for path, found in problems.items() if found} == {}


def test_the_unpickling_scan_finds_what_it_looks_for():
    tree = ast.parse("import pickle\nimport torch\ntorch.load(f)\ntorch.load(f, weights_only=False)\n"
                     "numpy.load(f, allow_pickle=True)\ntorch.load(f, weights_only=True)\n")
    assert len(unpickling_calls(tree)) == 4

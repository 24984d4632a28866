"""/v1/files for training texts: plain UTF-8 checked to the byte, stored under our own ids, limited in
size before it is read and by the data quota; and who may use the training routes at all."""

from __future__ import annotations

import socket
from pathlib import Path

import httpx
import pytest

from tests.helpers import make_corpus
from tests.service.helpers import live_server
from tests.service.training import ADMIN, ADMIN_KEY, API_KEY, create_job, training_server, upload

UPLOAD_LIMIT = 40_000


@pytest.fixture(scope="module")
def server(tiny_models: Path, tmp_path_factory: pytest.TempPathFactory):
    with training_server(tiny_models, tmp_path_factory.mktemp("files"), max_upload_bytes=UPLOAD_LIMIT) as running:
        yield running


def test_an_upload_reports_its_bytes_and_characters_and_reads_back_whole(server):
    base, _, data = server
    text = "я помню чудное мгновенье\n" * 100  # two bytes a letter
    answer = upload(base, text, name="../../etc/passwd")
    assert answer.status_code == 200, answer.text
    record = answer.json()
    assert record["object"] == "file" and record["purpose"] == "fine-tune" and record["id"].startswith("file-")
    assert record["bytes"] == len(text.encode()) and record["characters"] == len(text)
    assert record["filename"] == "../../etc/passwd"  # kept as a name, never used as a path
    assert not (data.parent / "etc").exists() and (data / "files" / record["id"]).is_file()
    assert httpx.get(f"{base}/v1/files/{record['id']}/content", headers=ADMIN).text == text
    assert httpx.get(f"{base}/v1/files/{record['id']}", headers=ADMIN).json() == record
    assert record["id"] in [f["id"] for f in httpx.get(f"{base}/v1/files", headers=ADMIN).json()["data"]]
    deleted = httpx.delete(f"{base}/v1/files/{record['id']}", headers=ADMIN)
    assert deleted.json() == {"id": record["id"], "object": "file", "deleted": True}
    assert httpx.get(f"{base}/v1/files/{record['id']}", headers=ADMIN).status_code == 404
    assert not (data / "files" / record["id"]).exists()


@pytest.mark.parametrize(("content", "says"), [
    (b"good text, then \xff bad", "byte 16 (0xff)"),
    (b"fine" + "é".encode()[:1], "byte 4"),
    (b"", "empty"),
])
def test_a_file_that_is_not_utf8_text_is_refused_naming_the_byte(server, content, says):
    answer = upload(server[0], content)
    assert answer.status_code == 400 and says in answer.json()["error"]["message"], answer.text
    assert answer.json()["error"]["param"] == "file"


def test_bad_forms_are_refused_by_name(server):
    base = server[0]
    wrong_purpose = httpx.post(f"{base}/v1/files", headers=ADMIN, files={"file": ("a.txt", b"abc")},
                               data={"purpose": "assistants"})
    assert wrong_purpose.status_code == 400 and wrong_purpose.json()["error"]["param"] == "purpose"
    no_file = httpx.post(f"{base}/v1/files", headers=ADMIN, files={"other": ("a.txt", b"abc")},
                         data={"purpose": "fine-tune"})
    assert no_file.status_code == 400 and "'file'" in no_file.json()["error"]["message"]
    json_body = httpx.post(f"{base}/v1/files", headers=ADMIN, json={"file": "abc"})
    assert json_body.status_code == 415 and "multipart" in json_body.json()["error"]["message"]


def test_an_upload_over_the_limit_is_refused_before_it_is_read(server):
    base = server[0]
    answer = upload(base, "a" * (UPLOAD_LIMIT + 10))
    assert answer.status_code == 413 and "40,000" in answer.json()["error"]["message"]
    # Announced larger than the limit allows: refused from its headers, while none of the body is sent.
    host, port = base.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        sock.sendall(f"POST /v1/files HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {ADMIN_KEY}\r\n"
                     "Content-Type: multipart/form-data; boundary=x\r\nContent-Length: 1000000000\r\n\r\n".encode())
        assert sock.recv(4096).startswith(b"HTTP/1.1 413")


def test_a_file_in_use_by_an_unfinished_job_cannot_be_deleted(server):
    base = server[0]
    file_id = upload(base, make_corpus()).json()["id"]
    job = create_job(base, file_id, hyperparameters={"max_iters": 100_000, "n_layer": 1, "n_embd": 16,
                                                     "block_size": 8, "eval_interval": 1000}).json()
    answer = httpx.delete(f"{base}/v1/files/{file_id}", headers=ADMIN)
    assert answer.status_code == 409 and job["id"] in answer.json()["error"]["message"]
    assert httpx.post(f"{base}/v1/fine_tuning/jobs/{job['id']}/cancel", headers=ADMIN).status_code == 200
    assert httpx.get(f"{base}/v1/files/missing", headers=ADMIN).status_code == 404


def test_the_quota_refuses_with_its_figures(tiny_models, tmp_path):
    with training_server(tiny_models, tmp_path, data_quota_bytes=1500) as (base, _, _):
        assert upload(base, "a" * 1000).status_code == 200
        answer = upload(base, "b" * 1000)
        assert answer.status_code == 507, answer.text
        message = answer.json()["error"]["message"]
        assert "1,500" in message and "1,000" in message and answer.json()["error"]["code"] == "quota_exceeded"


def test_training_routes_need_training_on_and_the_admin_key(server, tiny_models):
    base = server[0]
    for headers in ({}, {"Authorization": f"Bearer {API_KEY}"}, {"Authorization": "Bearer wrong"}):
        for method, path in (("GET", "/v1/files"), ("GET", "/v1/fine_tuning/jobs"),
                             ("POST", "/v1/fine_tuning/jobs")):
            answer = httpx.request(method, f"{base}{path}", headers=headers, json={})
            assert answer.status_code == 401, (path, headers, answer.text)
    with live_server(tiny_models, admin_key=ADMIN_KEY) as (off, _):
        answer = httpx.get(f"{off}/v1/fine_tuning/jobs", headers=ADMIN)
        assert answer.status_code == 403 and "CHARLM_TRAINING=1" in answer.json()["error"]["message"]

"""`perk serve` as a user meets it: started as a process on a free port, called over real HTTP."""

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
import torch

from perk_cli import __version__
from perk_cli.config import LoraSettings, PromptSettings, RunConfig
from perk_cli.memory import adapt_text, adapting_runtime
from perk_cli.checkpoint import build_runtime, save_checkpoint
from tests.conftest import run_cli

ROOT = Path(__file__).resolve().parents[2]
DOC = ("Mary went to the kitchen. John went to the garden. Sandra travelled to the office. "
       "Mary moved to the hallway. John journeyed to the bedroom.")
QUESTIONS = ["Where is Mary?", "Where is John?", "Where is Sandra?"]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    directory = tmp_path_factory.mktemp("ckpt") / "run" / "best"
    config = RunConfig(perk_version=__version__, lora=LoraSettings(rank=4, alpha=8),
                       prompt=PromptSettings(segment_tokens=32, max_answer_tokens=8))
    torch.manual_seed(3)
    runtime = build_runtime(config)
    with torch.no_grad():  # a non-trivial init, so that memories differ and answers depend on them
        for name, param in runtime.meta.lora_init().items():
            if ".lora_B." in name:
                param.normal_(0, 0.05)
    save_checkpoint(directory, config, runtime.state_tensors())
    return directory


class Server:
    def __init__(self, checkpoint: Path, store: Path, *flags: str):
        env = {**{k: v for k, v in os.environ.items() if k != "PERK_TOKEN"}, "HF_HUB_OFFLINE": "1"}
        self.process = subprocess.Popen(
            [sys.executable, "-m", "perk_cli.cli", "serve", "--checkpoint", str(checkpoint), "--store", str(store),
             "--port", "0", *flags], cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        line = self.process.stderr.readline()  # "serving ... at http://127.0.0.1:PORT (OpenAPI at /docs); ..."
        assert "serving" in line, line + self.process.stderr.read()[-2000:]
        self.url = re.search(r"http://[^\s]+?:\d+", line).group(0)
        self.token = None

    def call(self, method: str, path: str, body=None, raw: bytes | None = None, headers: dict | None = None):
        data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
        request = urllib.request.Request(self.url + path, data=data, method=method,
                                         headers={"Content-Type": "application/json", **(headers or {}),
                                                  **({"Authorization": f"Bearer {self.token}"} if self.token else {})})
        try:
            with urllib.request.urlopen(request, timeout=300) as response:
                text = response.read().decode()
                return response.status, json.loads(text) if text else None
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read().decode() or "null")

    def wait(self, job: str, timeout: float = 300) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            status, view = self.call("GET", f"/v1/jobs/{job}")
            assert status == 200, view
            if view["status"] in ("done", "failed"):
                return view
            assert time.monotonic() < deadline, view
            time.sleep(0.1)

    def stop(self):
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()


@pytest.fixture(scope="module")
def server(checkpoint, tmp_path_factory):
    running = Server(checkpoint, tmp_path_factory.mktemp("store") / "memories")
    yield running
    running.stop()


def test_a_memory_the_server_writes_answers_as_perk_ask_answers_from_its_file(server, capsys):
    status, created = server.call("POST", "/v1/memories", {"text": DOC, "name": "mary"})
    assert status == 202 and created["id"] == "mary"
    assert server.wait(created["job"])["status"] == "done"
    status, listed = server.call("GET", "/v1/memories")
    assert status == 200 and [m["id"] for m in listed["memories"]] == ["mary"] and listed["memories"][0]["compatible"]
    memory_file = Path(server.process.args[server.process.args.index("--store") + 1]) / "mary.safetensors"
    for question in QUESTIONS:
        status, answered = server.call("POST", "/v1/memories/mary/ask", {"question": question})
        assert status == 200 and answered["seconds"] > 0
        code, out, err = run_cli(["ask", str(memory_file), question, "--json"], capsys)
        assert code == 0, err
        assert (answered["answer"], answered["raw"]) == (json.loads(out)["answer"], json.loads(out)["raw"])
    # perk ask --server: the same answer, and the command never imports torch
    probe = ("import atexit, sys; atexit.register(lambda: print('TORCH', 'torch' in sys.modules, file=sys.stderr)); "
             f"sys.argv = ['perk', 'ask', '--server', {server.url!r}, 'mary', {QUESTIONS[0]!r}, '--json']; "
             "from perk_cli.cli import main; main()")
    started = time.perf_counter()
    result = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "TORCH False" in result.stderr
    status, answered = server.call("POST", "/v1/memories/mary/ask", {"question": QUESTIONS[0]})
    assert json.loads(result.stdout)["answer"] == answered["answer"]
    assert time.perf_counter() - started < 30


def test_append_grows_a_served_memory_as_perk_adapt_into_grows_its_file(server, checkpoint, tmp_path, capsys):
    store = Path(server.process.args[server.process.args.index("--store") + 1])
    job = server.call("POST", "/v1/memories", {"text": DOC, "name": "grow"})[1]["job"]
    assert server.wait(job)["status"] == "done"
    shutil.copy(store / "grow.safetensors", tmp_path / "grow.safetensors")
    more = "Daniel went to the cinema. Mary went back to the garden."
    status, reply = server.call("POST", "/v1/memories/grow/append", {"text": more})
    assert status == 202 and reply["id"] == "grow"
    assert server.wait(reply["job"])["status"] == "done"
    described = server.call("GET", "/v1/memories/grow")[1]
    assert described["documents"] == "2"
    (tmp_path / "more.txt").write_text(more)
    code, _, err = run_cli(["adapt", str(tmp_path / "more.txt"), "--into", str(tmp_path / "grow.safetensors"),
                            "--checkpoint", str(checkpoint), "-q"], capsys)
    assert code == 0, err
    assert (tmp_path / "grow.safetensors").read_bytes() != b"" and \
        _tensors(tmp_path / "grow.safetensors") == _tensors(store / "grow.safetensors")
    assert server.call("POST", "/v1/memories/nobody/append", {"text": more})[0] == 404


def _tensors(path: Path) -> dict:
    from safetensors.torch import load_file

    return {k: v.tolist() for k, v in load_file(str(path)).items()}


def test_a_file_put_in_the_store_is_served_and_a_deleted_one_is_gone(server, checkpoint):
    store = Path(server.process.args[server.process.args.index("--store") + 1])
    runtime, origin = adapting_runtime(checkpoint=checkpoint)
    adapt_text(runtime, origin, "Daniel went to the cinema.").save(store / "daniel.safetensors")
    status, described = server.call("GET", "/v1/memories/daniel")
    assert status == 200 and described["segments"] == "1" and described["compatible"]
    status, answered = server.call("POST", "/v1/memories/daniel/ask", {"question": "Where is Daniel?"})
    assert status == 200 and isinstance(answered["answer"], str)
    assert server.call("DELETE", "/v1/memories/daniel")[0] == 204
    assert not (store / "daniel.safetensors").exists()
    assert server.call("POST", "/v1/memories/daniel/ask", {"question": "Where is Daniel?"})[0] == 404


def test_every_bad_request_is_a_4xx_with_a_one_line_reason(server, checkpoint, tmp_path):
    store = Path(server.process.args[server.process.args.index("--store") + 1])
    if not (store / "mary.safetensors").exists():
        job = server.call("POST", "/v1/memories", {"text": DOC, "name": "mary"})[1]["job"]
        server.wait(job)
    plain, origin = adapting_runtime(model="tiny")  # plain test-time training: another writer than the checkpoint
    adapt_text(plain, origin, DOC).save(store / "plain.safetensors")
    cases = [
        ("POST", "/v1/memories/nobody/ask", {"question": "Where?"}, None, 404, "no memory 'nobody'"),
        ("POST", "/v1/memories/" + urllib.parse.quote("../mary", safe="") + "/ask", {"question": "Where?"}, None,
         404, "memory ids are plain names"),
        ("POST", "/v1/memories/..mary/ask", {"question": "Where?"}, None, 400, "memory id '..mary'"),
        ("GET", "/v1/memories/.hidden", None, None, 400, "memory id '.hidden'"),
        ("POST", "/v1/memories/plain/ask", {"question": "Where is Mary?"}, None, 409, "another checkpoint"),
        ("POST", "/v1/memories/mary/ask", {"question": "  "}, None, 400, "the question is empty"),
        ("POST", "/v1/memories/mary/ask", {"question": "Where is Mary? " * 400}, None, 400, "positions"),
        ("POST", "/v1/memories/mary/ask", {"query": "Where is Mary?"}, None, 422, "question: field required"),
        ("POST", "/v1/memories/mary/ask", None, b"{not json", 422, ""),
        ("POST", "/v1/memories", {"text": ""}, None, 400, "text: empty"),
        ("POST", "/v1/memories", {"text": DOC, "name": "mary"}, None, 409, "exists already"),
        ("POST", "/v1/memories", {"text": DOC, "name": "../../etc/x"}, None, 400, "memory id"),
        ("GET", "/v1/jobs/j-nothing", None, None, 404, "no job"),
        ("DELETE", "/v1/memories/nobody", None, None, 404, "no memory"),
    ]
    for method, path, body, raw, code, says in cases:
        status, reply = server.call(method, path, body, raw)
        assert status == code, (path, body, reply)
        assert isinstance(reply["error"], str) and "\n" not in reply["error"] and says in reply["error"], reply
    # a body announced over the limit is refused before it is read
    import http.client

    host, port = server.url.removeprefix("http://").rsplit(":", 1)
    connection = http.client.HTTPConnection(host, int(port), timeout=30)
    connection.putrequest("POST", "/v1/memories")
    connection.putheader("Content-Type", "application/json")
    connection.putheader("Content-Length", str(9 << 20))
    connection.endheaders()
    response = connection.getresponse()
    assert response.status == 413 and "over this server's limit" in json.loads(response.read())["error"]
    connection.close()


def test_any_address_but_loopback_needs_a_token_and_a_token_guards_every_route(checkpoint, tmp_path, capsys):
    refused = subprocess.run([sys.executable, "-m", "perk_cli.cli", "serve", "--checkpoint", str(checkpoint),
                              "--store", str(tmp_path / "s"), "--host", "0.0.0.0"], cwd=ROOT, capture_output=True,
                             text=True, timeout=60, env={k: v for k, v in os.environ.items() if k != "PERK_TOKEN"})
    assert refused.returncode == 2 and "--host 0.0.0.0" in refused.stderr and "--token" in refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1
    guarded = Server(checkpoint, tmp_path / "s", "--token", "s3cret", "--max-text-chars", "40", "--max-body-mb",
                     "0.001")
    try:
        for path in ("/health", "/v1/memories"):
            status, reply = guarded.call("GET", path)
            assert status == 401 and "bearer token" in reply["error"]
        assert guarded.call("GET", "/health", headers={"Authorization": "Bearer wrong"})[0] == 401
        code, _, err = run_cli(["ask", "--server", guarded.url, "nobody", "Where?"], capsys)
        assert code == 2 and "401" in err and len(err.strip().splitlines()) == 1
        code, _, err = run_cli(["ask", "--server", guarded.url, "nobody", "Where?", "--token", "s3cret"], capsys)
        assert code == 2 and "404 no memory 'nobody'" in err  # the token went through
        guarded.token = "s3cret"
        assert guarded.call("GET", "/health")[0] == 200
        status, reply = guarded.call("POST", "/v1/memories", {"text": "Mary went to the kitchen. " * 2})
        assert status == 400 and "over this server's limit of 40" in reply["error"]
        status, reply = guarded.call("POST", "/v1/memories", {"text": "x" * 1100})
        assert status == 413 and "limit of 1048" in reply["error"]
    finally:
        guarded.stop()


def test_asks_are_answered_during_an_adaptation_and_a_killed_server_leaves_no_partial_memory(checkpoint, tmp_path):
    store = tmp_path / "store"
    first = Server(checkpoint, store)
    try:
        job = first.call("POST", "/v1/memories", {"text": DOC, "name": "mary"})[1]["job"]
        assert first.wait(job)["status"] == "done"
        before = first.call("POST", "/v1/memories/mary/ask", {"question": QUESTIONS[0]})[1]
        long_text = " ".join(f"Person{i} went to the place{i % 97}." for i in range(40_000))  # ~ a minute of adapting
        long_job = first.call("POST", "/v1/memories", {"text": long_text, "name": "long"})[1]["job"]
        deadline = time.monotonic() + 120
        while first.call("GET", f"/v1/jobs/{long_job}")[1]["progress"] == 0:
            assert time.monotonic() < deadline
            time.sleep(0.1)
        answered = first.call("POST", "/v1/memories/mary/ask", {"question": QUESTIONS[0]})[1]
        view = first.call("GET", f"/v1/jobs/{long_job}")[1]
        assert view["status"] == "running", view  # answered while the job adapts, not after it
        assert answered["answer"] == before["answer"]
        first.process.send_signal(signal.SIGKILL)
        first.process.wait()
    finally:
        first.stop()
    assert not (store / "long.safetensors").exists()
    restarted = Server(checkpoint, store)
    try:
        assert [m["id"] for m in restarted.call("GET", "/v1/memories")[1]["memories"]] == ["mary"]
        assert not [p for p in store.iterdir() if p.name.startswith(".")]  # a staging file, had there been one
        assert restarted.call("POST", "/v1/memories/mary/ask", {"question": QUESTIONS[0]})[1]["answer"] == \
            before["answer"]
    finally:
        restarted.stop()

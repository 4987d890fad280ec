"""engine serve --reload end to end: each kind of edit is served without a failed request. Every test runs a client
loop (threads sending one request after another for the whole test) that must see only 200s carrying an expected
answer, and waits for a reload by the answers it brings or by the server's log, never by the clock. The server's
output goes to a file beside the project, not in it (a file written in the project would itself be a change)."""
from __future__ import annotations

import asyncio
import json
import os
import textwrap
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import websockets
from support import alive

from engine.testing import Server, api_yaml, wait_for, write_project

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

RELOAD_TIMEOUT = 30  # seconds a reload may take before a test fails: generous, a reload takes well under one


class ClientLoop:
    """Threads each sending one request after another until the test ends; every answer must be a 200 whose
    "answer" is one of `accepted`, and no request may fail to connect."""

    def __init__(self, server: Server, path: str, accepted: set[str], threads: int = 1) -> None:
        self.server = server
        self.url = server.url + path
        self.accepted = accepted
        self.answers: list[list[dict[str, Any]]] = [[] for _ in range(threads)]  # each thread's, in order
        self.failures: list[str] = []
        self.changed = threading.Condition()
        self.stopping = threading.Event()
        self.threads = [threading.Thread(target=self._send, args=(index,), daemon=True) for index in range(threads)]

    def __enter__(self) -> ClientLoop:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, *_: object) -> None:
        self.stopping.set()
        for thread in self.threads:
            thread.join(60)
        if kind is None:
            self.check()

    def _send(self, index: int) -> None:
        with httpx.Client(timeout=60) as client:
            while not self.stopping.is_set():
                failure = None
                try:
                    response = client.post(self.url, json={})
                    body = response.json() if response.status_code == 200 else None
                    if body is None:
                        failure = f"{response.status_code} {response.text}"
                    elif body.get("answer") not in self.accepted:
                        failure = f"unexpected answer {body}"
                except (httpx.HTTPError, ValueError) as error:
                    failure = f"{type(error).__name__}: {error}"
                with self.changed:
                    if failure is not None:
                        self.failures.append(failure)
                    else:
                        self.answers[index].append(body)
                    self.changed.notify_all()

    def wait_for(self, answer: str, timeout: float = RELOAD_TIMEOUT) -> None:
        """Wait until some thread has been answered `answer`; fail at once on a failed request."""
        def seen() -> bool:
            return bool(self.failures) or any(body["answer"] == answer for bodies in self.answers for body in bodies)
        with self.changed:
            arrived = self.changed.wait_for(seen, timeout)
        self.check()
        assert arrived, f"the answer {answer!r} never came; the server said:\n{self.server.output}"

    def check(self) -> None:
        """No request failed, and the loop was answered."""
        assert not self.failures, f"{len(self.failures)} failed requests, the first: {self.failures[:3]}\n" \
                                  f"the server said:\n{self.server.output}"
        assert any(self.answers), "the client loop was never answered"

    def assert_in_order(self, order: list[str]) -> None:
        """Each thread saw the answers in this order, each after the first of the next one never again."""
        for bodies in self.answers:
            seen = [body["answer"] for body in bodies]
            ranks = [order.index(answer) for answer in seen]
            assert ranks == sorted(ranks), f"answers out of order: {_runs(seen)}"

    def bodies(self, answer: str) -> list[dict[str, Any]]:
        """Every body that carried `answer`."""
        return [body for bodies in self.answers for body in bodies if body["answer"] == answer]


def _runs(answers: list[str]) -> list[tuple[str, int]]:
    """The answers as runs of equal ones: [("one", 31), ("two", 12)]."""
    runs: list[tuple[str, int]] = []
    for answer in answers:
        if runs and runs[-1][0] == answer:
            runs[-1] = (answer, runs[-1][1] + 1)
        else:
            runs.append((answer, 1))
    return runs


def edit(path: Path, text: str, atomic: bool = False) -> None:
    """Write a file as an editor saves it, in place or (`atomic`) as a new file renamed over it; on disk before this
    returns."""
    written = path.with_name(path.name + ".swp") if atomic else path
    with open(written, "w") as stream:
        stream.write(textwrap.dedent(text).lstrip("\n"))
        stream.flush()
        os.fsync(stream.fileno())
    if atomic:
        os.replace(written, path)


def wait_reloads(server: Server, count: int) -> None:
    """Wait until the server has said `count` times that a reload is done (new requests go to the new predictors;
    those replaced stop once their requests have ended)."""
    wait_for(lambda: server.output.count("reload: rebuilt api") >= count, f"reload {count} ending", RELOAD_TIMEOUT)


def lines(path: Path) -> list[str]:
    """The lines a predictor appended to a file outside the project (none when it does not exist yet)."""
    return path.read_text().splitlines() if path.exists() else []


@pytest.fixture
def reloading(tmp_path: Path) -> Iterator[Callable[..., tuple[Server, Path]]]:
    """Start `engine serve --reload` (or, given `env`, `engine serve` with that environment) on a project written from
    files (in tmp_path/project; its log in tmp_path) and wait until it is ready and watching."""
    servers: list[Server] = []

    def start(files: dict[str, str], *args: str, env: dict[str, str] | None = None) -> tuple[Server, Path]:
        project = write_project(tmp_path / "project", files)
        server = Server(project, *(args if env else ("--reload", *args)), env=env)
        servers.append(server)
        server.wait_ready()
        server.wait_output("--reload: watching")
        return server, project

    yield start
    for server in servers:
        server.close()


def answering(answer: str, init: str = "pass") -> str:
    """A predictor whose predict answers {"answer": answer, "pid": its process}; `init` is its __init__'s body."""
    return f"""
import os


class PythonPredictor:
    def __init__(self, config):
        {init}

    def predict(self, payload):
        return {{"answer": {answer!r}, "pid": os.getpid()}}
"""


def counting(name: str, counter: Path, suffix: str = "") -> str:
    """A predictor that appends `name` to `counter` in __init__ and answers config["greeting"] + `suffix`."""
    return f"""
class PythonPredictor:
    def __init__(self, config):
        with open({str(counter)!r}, "a") as counter:
            counter.write({name!r} + "\\n")
        self.greeting = config["greeting"]

    def predict(self, payload):
        return {{"answer": self.greeting + {suffix!r}}}
"""


IMPORTING = """
from helpers import ANSWER


class PythonPredictor:
    def __init__(self, config):
        pass

    def predict(self, payload):
        return {"answer": ANSWER}
"""


ENV_PREDICTOR = """
import os


class PythonPredictor:
    def __init__(self, config):
        self.greeting = os.environ["GREETING"]

    def predict(self, payload):
        return {"answer": self.greeting}
"""


# --- code, configuration, .env ------------------------------------------------------------------------------------


def test_each_edit_of_the_predictor_is_served_without_a_failed_request(reloading):
    server, project = reloading({"cortex.yaml": api_yaml("api"), "predictor.py": answering("one")})
    with ClientLoop(server, "/api", {"one", "two", "three"}) as loop:
        loop.wait_for("one")
        edit(project / "predictor.py", answering("two"))
        loop.wait_for("two")
        edit(project / "predictor.py", answering("three"), atomic=True)
        loop.wait_for("three")
    loop.assert_in_order(["one", "two", "three"])
    server.wait_output("reload: changed: predictor.py")
    server.wait_output("reload: rebuilt api 'api' in")


def test_engine_reload_in_the_environment_is_the_flag(reloading):
    server, project = reloading({"cortex.yaml": api_yaml("api"), "predictor.py": answering("one")},
                                env={"ENGINE_RELOAD": "1"})
    with ClientLoop(server, "/api", {"one", "two"}) as loop:
        loop.wait_for("one")
        edit(project / "predictor.py", answering("two"))
        loop.wait_for("two")


def test_an_edit_saved_while_a_slow_init_reloads_is_served_next(reloading, tmp_path):
    started = tmp_path / "started"
    slow = f'open({str(started)!r}, "a").write("x"); import time; time.sleep(1)'
    server, project = reloading({"cortex.yaml": api_yaml("api"), "predictor.py": answering("one", init=slow)})
    with ClientLoop(server, "/api", {"one", "two", "three"}) as loop:
        loop.wait_for("one")
        edit(project / "predictor.py", answering("two", init=slow))
        wait_for(lambda: len(started.read_text()) == 2, "the new predictor's __init__ starting", RELOAD_TIMEOUT)
        edit(project / "predictor.py", answering("three", init=slow))  # while "two" is still in its __init__
        loop.wait_for("three")
    loop.assert_in_order(["one", "two", "three"])


def test_an_edit_of_a_module_the_predictor_imports_is_served(reloading):
    server, project = reloading({"cortex.yaml": api_yaml("api"), "predictor.py": IMPORTING,
                                 "helpers.py": "ANSWER = 'one'\n"})
    with ClientLoop(server, "/api", {"one", "two"}) as loop:
        loop.wait_for("one")
        edit(project / "helpers.py", "ANSWER = 'two'\n")
        loop.wait_for("two")
    loop.assert_in_order(["one", "two"])


def test_a_config_or_code_edit_of_one_api_rebuilds_only_that_api(reloading, tmp_path):
    inits = tmp_path / "inits"

    def config(greeting_a: str) -> str:
        return (api_yaml("a", "a.py", predictor_extra=f"config:\n  greeting: {greeting_a}")
                + api_yaml("b", "b.py", predictor_extra="config:\n  greeting: hi from b"))

    server, project = reloading({"cortex.yaml": config("hello"), "a.py": counting("a", inits),
                                 "b.py": counting("b", inits)})
    assert sorted(lines(inits)) == ["a", "b"]
    with ClientLoop(server, "/a", {"hello", "salut", "salut!"}) as loop_a, \
            ClientLoop(server, "/b", {"hi from b"}) as loop_b:
        loop_a.wait_for("hello")
        loop_b.wait_for("hi from b")
        edit(project / "cortex.yaml", config("salut"))
        loop_a.wait_for("salut")
        wait_reloads(server, 1)
        edit(project / "a.py", counting("a", inits, suffix="!"))
        loop_a.wait_for("salut!")
        wait_reloads(server, 2)
    loop_a.assert_in_order(["hello", "salut", "salut!"])
    assert sorted(lines(inits)) == ["a", "a", "a", "b"]  # b's predictor was not initialised again
    assert server.output.count("reload: rebuilt api 'a' in") == 2


def test_an_env_edit_is_seen_by_the_new_predictor(reloading):
    server, project = reloading({"cortex.yaml": api_yaml("api"), "predictor.py": ENV_PREDICTOR,
                                 ".env": "GREETING=hello\n"})
    with ClientLoop(server, "/api", {"hello", "bonjour"}) as loop:
        loop.wait_for("hello")
        edit(project / ".env", "GREETING=bonjour\n")
        loop.wait_for("bonjour")
    loop.assert_in_order(["hello", "bonjour"])
    server.wait_output("reload: changed: .env")


def test_an_env_edit_reaches_worker_processes(reloading):
    config = api_yaml("api", predictor_extra="processes_per_replica: 2")
    server, project = reloading({"cortex.yaml": config, "predictor.py": ENV_PREDICTOR, ".env": "GREETING=hello\n"})
    with ClientLoop(server, "/api", {"hello", "bonjour"}, threads=2) as loop:
        loop.wait_for("hello")
        edit(project / ".env", "GREETING=bonjour\n")
        loop.wait_for("bonjour")
    loop.assert_in_order(["hello", "bonjour"])


def test_a_variable_removed_from_env_is_unset_for_the_new_predictor(reloading):
    predictor = ENV_PREDICTOR.replace('os.environ["GREETING"]', 'os.environ.get("GREETING", "unset")')
    server, project = reloading({"cortex.yaml": api_yaml("api"), "predictor.py": predictor,
                                 ".env": "GREETING=hello\n"})
    with ClientLoop(server, "/api", {"hello", "unset"}) as loop:
        loop.wait_for("hello")
        edit(project / ".env", "# no GREETING any more\n")
        wait_reloads(server, 1)
        assert server.client.post("/api", json={}).json()["answer"] == "unset"
    loop.assert_in_order(["hello", "unset"])


def test_an_api_added_to_cortex_yaml_appears_and_one_removed_disappears(reloading, tmp_path):
    inits = tmp_path / "inits"
    one = api_yaml("a", "a.py", predictor_extra="config:\n  greeting: from a")
    two = one + api_yaml("b", "b.py", predictor_extra="config:\n  greeting: from b")
    server, project = reloading({"cortex.yaml": one, "a.py": counting("a", inits),
                                 "b.py": counting("b", inits)})
    assert server.client.post("/b", json={}).status_code == 404
    with ClientLoop(server, "/a", {"from a"}) as loop:
        loop.wait_for("from a")
        edit(project / "cortex.yaml", two)
        wait_for(lambda: server.client.post("/b", json={}).status_code == 200, "api b's route appearing",
                 RELOAD_TIMEOUT)
        assert server.client.post("/b", json={}).json()["answer"] == "from b"
        server.wait_output("reload: rebuilt api 'b' in")
        edit(project / "cortex.yaml", one)
        wait_for(lambda: server.client.post("/b", json={}).status_code == 404, "api b's route going",
                 RELOAD_TIMEOUT)
        server.wait_output("removed 'b'")
        assert server.client.post("/a", json={}).json()["answer"] == "from a"
    assert lines(inits) == ["a", "b"]  # a was served throughout by its first predictor


# --- errors: the running version keeps serving --------------------------------------------------------------------


def test_a_syntax_error_is_said_once_and_the_running_version_serves_until_it_is_fixed(reloading):
    server, project = reloading({"cortex.yaml": api_yaml("api"), "predictor.py": answering("one")})
    broken = answering("one").replace("def predict(self, payload):", "def predict(self, payload)")
    line = broken.lstrip("\n").splitlines().index("    def predict(self, payload)") + 1
    with ClientLoop(server, "/api", {"one", "two"}) as loop:
        loop.wait_for("one")
        edit(project / "predictor.py", broken)
        server.wait_output("reload: the project was not reloaded; still serving it as it was")
        edit(project / "predictor.py", answering("two"))
        loop.wait_for("two")
    loop.assert_in_order(["one", "two"])
    output = server.output
    said = f"api 'api': error in predictor.py: expected ':' (line {line})"  # as engine serve says it at start-up
    assert output.count(said) == 1 and output.count("not reloaded") == 1, output


def test_an_init_that_raises_leaves_the_running_version_serving(reloading):
    server, project = reloading({"cortex.yaml": api_yaml("api"), "predictor.py": answering("one")})
    broken = answering("one", init='raise RuntimeError("broken on purpose")')
    line = broken.lstrip("\n").splitlines().index('        raise RuntimeError("broken on purpose")') + 1
    with ClientLoop(server, "/api", {"one", "two"}) as loop:
        loop.wait_for("one")
        edit(project / "predictor.py", broken)
        server.wait_output("still serving the previous version")
        edit(project / "predictor.py", answering("two"))
        loop.wait_for("two")
    loop.assert_in_order(["one", "two"])
    output = server.output
    assert output.count("RuntimeError: broken on purpose") == 1, output
    assert f'Traceback (most recent call last):\n  File "{project / "predictor.py"}", line {line}, in __init__' \
        in output, output  # starting at the user's code, in the project (not in the view engine runs it from)


def test_a_failed_reload_leaves_the_environment_as_it_was(reloading):
    predictor = """
import os


class PythonPredictor:
    def __init__(self, config):
        INIT

    def predict(self, payload):
        return {"answer": os.environ["GREETING"]}  # read at each request, as examples/greeter does
"""
    server, project = reloading({"cortex.yaml": api_yaml("api"), "predictor.py": predictor.replace("INIT", "pass"),
                                 ".env": "GREETING=hello\n"})
    # While the new predictor starts, the old one, in the same process, may see its variables: both answers are 200s
    with ClientLoop(server, "/api", {"hello", "bonjour"}) as loop:
        loop.wait_for("hello")
        edit(project / "predictor.py", predictor.replace("INIT", 'raise RuntimeError("broken on purpose")'))
        server.wait_output("still serving the previous version")
        edit(project / ".env", "GREETING=bonjour\n")  # the predictor is still broken: nothing may change
        wait_for(lambda: server.output.count("still serving the previous version") == 2, "the second failure",
                 RELOAD_TIMEOUT)
        assert server.client.post("/api", json={}).json()["answer"] == "hello"
        edit(project / "predictor.py", predictor.replace("INIT", "pass"))
        loop.wait_for("bonjour")
        wait_reloads(server, 1)
        assert server.client.post("/api", json={}).json()["answer"] == "bonjour"


# --- worker processes, batching, streams, WebSockets, models ------------------------------------------------------


def test_every_worker_process_is_replaced(reloading, tmp_path):
    inits = tmp_path / "inits"
    record = f'open({str(inits)!r}, "a").write(f"{{os.getpid()}}\\n")'
    server, project = reloading({"cortex.yaml": api_yaml("api", predictor_extra="processes_per_replica: 2"),
                                 "predictor.py": answering("one", init=record)})
    old = {int(pid) for pid in lines(inits)}
    assert len(old) == 2
    with ClientLoop(server, "/api", {"one", "two"}, threads=2) as loop:
        loop.wait_for("one")
        edit(project / "predictor.py", answering("two", init=record))
        loop.wait_for("two")
        server.wait_output("reload: rebuilt api 'api' in")
        new = {int(pid) for pid in lines(inits)} - old
        assert len(new) == 2
        wait_for(lambda: not any(alive(pid) for pid in old), "the old workers exiting", RELOAD_TIMEOUT)
        loop.wait_for("two")
    loop.assert_in_order(["one", "two"])
    assert {body["pid"] for body in loop.bodies("one")} <= old
    assert {body["pid"] for body in loop.bodies("two")} <= new


BATCHED = """
class PythonPredictor:
    def __init__(self, config):
        pass

    def predict(self, payload):
        return [{"answer": ANSWER, "batch": len(payload)} for _ in payload]
"""


def test_a_batching_api_is_rebuilt_without_a_failed_request(reloading):
    batching = "server_side_batching:\n  max_batch_size: 4\n  batch_interval: 20ms"
    server, project = reloading({"cortex.yaml": api_yaml("api", predictor_extra=batching),
                                 "predictor.py": BATCHED.replace("ANSWER", '"one"')})
    with ClientLoop(server, "/api", {"one", "two"}, threads=4) as loop:
        loop.wait_for("one")
        edit(project / "predictor.py", BATCHED.replace("ANSWER", '"two"'))
        loop.wait_for("two")
        server.wait_output("reload: rebuilt api 'api' in")
    loop.assert_in_order(["one", "two"])
    assert all(1 <= body["batch"] <= 4 for body in loop.bodies("one") + loop.bodies("two"))


STREAMING = """
import os
import time


class PythonPredictor:
    def __init__(self, config):
        self.gate = config["gate"]

    def predict(self, payload, query_params):
        if query_params.get("kind") == "stream":
            return self.stream()
        return {"answer": ANSWER}

    def stream(self):
        yield {"answer": ANSWER, "item": 0}
        while not os.path.exists(self.gate):  # until the test has edited the predictor and seen the new one
            time.sleep(0.01)
        for item in range(1, 4):
            yield {"answer": ANSWER, "item": item}
"""


def test_a_stream_begun_before_an_edit_completes_on_the_old_predictor(reloading, tmp_path):
    gate = tmp_path / "gate"
    config = f"threads_per_process: 4\nconfig:\n  gate: {gate}"
    server, project = reloading({"cortex.yaml": api_yaml("api", predictor_extra=config),
                                 "predictor.py": STREAMING.replace("ANSWER", '"one"')})
    with ClientLoop(server, "/api", {"one", "two"}) as loop, httpx.Client(timeout=60) as client:
        loop.wait_for("one")
        with client.stream("POST", server.url + "/api?kind=stream", json={}) as stream:
            assert stream.status_code == 200
            items = stream.iter_lines()
            first = json.loads(next(items))
            edit(project / "predictor.py", STREAMING.replace("ANSWER", '"two"'))
            loop.wait_for("two")
            gate.touch()
            rest = [json.loads(line) for line in items if line]
        server.wait_output("reload: rebuilt api 'api' in")
    loop.assert_in_order(["one", "two"])
    assert [first, *rest] == [{"answer": "one", "item": item} for item in range(4)]


def test_an_edit_made_while_a_stream_from_before_the_last_one_is_open_is_served(reloading, tmp_path):
    gate = tmp_path / "gate"
    config = f"threads_per_process: 4\nconfig:\n  gate: {gate}"
    server, project = reloading({"cortex.yaml": api_yaml("api", predictor_extra=config),
                                 "predictor.py": STREAMING.replace("ANSWER", '"one"')})
    with ClientLoop(server, "/api", {"one", "two", "three"}) as loop, httpx.Client(timeout=60) as client:
        loop.wait_for("one")
        with client.stream("POST", server.url + "/api?kind=stream", json={}) as stream:
            items = stream.iter_lines()
            first = json.loads(next(items))
            edit(project / "predictor.py", STREAMING.replace("ANSWER", '"two"'))
            loop.wait_for("two")
            edit(project / "predictor.py", STREAMING.replace("ANSWER", '"three"'))
            try:
                loop.wait_for("three", timeout=10)  # a reload takes milliseconds; this one waits for nothing
            finally:
                gate.touch()
            rest = [json.loads(line) for line in items if line]
    loop.assert_in_order(["one", "two", "three"])
    assert [first, *rest] == [{"answer": "one", "item": item} for item in range(4)]


def test_a_websocket_kept_open_across_an_edit_gets_the_new_answers(reloading):
    server, project = reloading({"cortex.yaml": api_yaml("api"), "predictor.py": answering("one")})

    async def conversation(loop: ClientLoop) -> list[str]:
        async with websockets.connect(f"ws://127.0.0.1:{server.port}/api") as socket:
            await socket.send("{}")
            before = json.loads(await socket.recv())["answer"]
            edit(project / "predictor.py", answering("two"))
            await asyncio.to_thread(loop.wait_for, "two")
            # the reload is done while this socket is still open
            await asyncio.to_thread(server.wait_output, "reload: rebuilt api 'api' in")
            answers = [before]
            for _ in range(3):
                await socket.send("{}")
                answers.append(json.loads(await socket.recv())["answer"])
            return answers

    with ClientLoop(server, "/api", {"one", "two"}) as loop:
        loop.wait_for("one")
        assert asyncio.run(conversation(loop)) == ["one", "two", "two", "two"]
    loop.assert_in_order(["one", "two"])


MODELS = """
class PythonPredictor:
    def __init__(self, config, python_client):
        self.client = python_client
        self.loads = config["loads"]

    def load_model(self, model_path):
        with open(self.loads, "a") as loads:
            loads.write(model_path + "\\n")
        with open(model_path + "/model.txt") as model:
            return model.read().strip()

    def predict(self, payload):
        return {"answer": ANSWER, "model": self.client.get_model()}
"""


def test_loaded_models_are_kept_when_only_the_predictor_code_changed(reloading, tmp_path):
    loads = tmp_path / "loads"
    config = f"models:\n  path: models/\nconfig:\n  loads: {loads}"
    server, project = reloading({"cortex.yaml": api_yaml("api", predictor_extra=config),
                                 "predictor.py": MODELS.replace("ANSWER", '"one"'), "models/1/model.txt": "weights"})
    assert len(lines(loads)) == 1
    with ClientLoop(server, "/api", {"one", "two", "three"}) as loop:
        loop.wait_for("one")
        for reloads, answer in enumerate(("two", "three"), 1):  # the second takes over what the first took over
            edit(project / "predictor.py", MODELS.replace("ANSWER", repr(answer)))
            loop.wait_for(answer)
            wait_reloads(server, reloads)
    loop.assert_in_order(["one", "two", "three"])
    assert {body["model"] for body in loop.bodies("two") + loop.bodies("three")} == {"weights"}
    assert len(lines(loads)) == 1, lines(loads)

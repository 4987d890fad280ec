"""engine.asgi: an app's lifespan driven in-process (Lifespan), and responses played into a fake send (play) — whole,
streamed in step with the caller, their background run once the caller is done — with inline Starlette apps."""
from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import pytest
from starlette.applications import Starlette
from starlette.background import BackgroundTask
from starlette.requests import Request
from starlette.responses import (
    JSONResponse,
    PlainTextResponse,
    Response,
    StreamingResponse,
)
from starlette.routing import Route

from engine import Lifespan, LifespanError, http_scope, play
from engine.serving.streams import (
    ItemStream,  # engine's streaming response, which closes its generator whatever ends it
)

pytestmark = pytest.mark.anyio

TIMEOUT = 10  # seconds after which a wait for something that never comes fails the test instead of hanging it


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


# --- Lifespan ------------------------------------------------------------------------------------------------------


def lifespan_app(events: list[str], fail: Exception | None = None) -> Starlette:
    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        events.append("startup")
        if fail is not None:
            raise fail
        yield
        events.append("shutdown")

    return Starlette(lifespan=lifespan)


async def test_lifespan_runs_the_apps_startup_then_its_shutdown():
    events: list[str] = []
    lifespan = Lifespan(lifespan_app(events))
    await lifespan.start()
    assert events == ["startup"]
    await lifespan.stop()
    assert events == ["startup", "shutdown"]
    await lifespan.stop()  # already ended: nothing more
    assert events == ["startup", "shutdown"]


async def test_a_failed_startup_raises_the_apps_own_error():
    with pytest.raises(OSError, match="port 9000 is taken"):
        await Lifespan(lifespan_app([], fail=OSError("port 9000 is taken"))).start()


async def test_a_failed_startup_without_an_error_raises_its_message():
    async def app(scope, receive, send):
        await receive()
        await send({"type": "lifespan.startup.failed", "message": "no model found"})
        await asyncio.get_running_loop().create_future()  # stays, as an app may

    with pytest.raises(LifespanError, match="^no model found$"):
        await Lifespan(app).start()


async def test_an_app_that_ends_without_answering_is_an_error():
    async def app(scope, receive, send):
        await receive()

    with pytest.raises(LifespanError, match="the app's lifespan ended during startup"):
        await Lifespan(app).start()


async def test_stop_before_start_does_nothing():
    await Lifespan(lifespan_app([])).stop()


# --- play: whole responses -----------------------------------------------------------------------------------------


async def test_a_response_gives_its_start_and_whole_body():
    async with play(JSONResponse({"a": 1}, status_code=201, headers={"x-id": "7"})) as played:
        assert played.status == 201
        assert (b"x-id", b"7") in played.headers and (b"content-type", b"application/json") in played.headers
        assert played.start["type"] == "http.response.start"
        assert (played.body, played.chunks) == (b'{"a":1}', None)
        assert await played.read() == b'{"a":1}'


async def test_the_background_runs_once_the_block_is_done():
    ran: list[str] = []
    async with play(PlainTextResponse("hi", background=BackgroundTask(ran.append, "post_predict"))) as played:
        ran.append(f"delivered {played.body!r}")
    assert ran == ["delivered b'hi'", "post_predict"]


async def test_an_error_in_the_block_skips_the_background():
    ran: list[str] = []
    with pytest.raises(ConnectionResetError):
        async with play(PlainTextResponse("hi", background=BackgroundTask(ran.append, "post_predict"))):
            raise ConnectionResetError
    assert ran == []


async def test_an_app_plays_with_the_request_given():
    async def echo(request: Request) -> Response:
        return PlainTextResponse(f"{request.method} {request.url.path} {request.headers['x-key']} "
                                 f"{await request.body()!r}")

    async def receive():
        return {"type": "http.request", "body": b"ping", "more_body": False}

    app = Starlette(routes=[Route("/echo", echo, methods=["POST"])])
    async with play(app, http_scope("/echo", "POST", [(b"x-key", b"k")]), receive) as played:
        assert (played.status, played.body) == (200, b"POST /echo k b'ping'")


async def test_a_custom_response_is_held_until_the_caller_is_done_with_its_body():
    events: list[str] = []

    class Forwarded(Response):  # like a worker's reply: it learns that the client has it once send() returns
        async def __call__(self, scope, receive, send):
            await super().__call__(scope, receive, send)
            events.append("sent")

    async with play(Forwarded(b"whole")) as played:
        assert (played.body, played.chunks) == (b"whole", None)
        await asyncio.sleep(0)  # were the response not held, it would go on meanwhile
        events.append("delivered")
    assert events == ["delivered", "sent"]


async def test_an_app_that_sends_no_response_is_an_error():
    async def silent(scope, receive, send):
        pass

    with pytest.raises(RuntimeError, match="ended without sending a response"):
        async with play(silent):
            pass


async def test_an_app_that_fails_before_its_start_raises_its_error():
    async def failing(scope, receive, send):
        raise KeyError("broken")

    with pytest.raises(KeyError, match="broken"):
        async with play(failing):
            pass


# --- play: streams -------------------------------------------------------------------------------------------------


class Stream:
    """A generator whose items the test releases one at a time, recording what it made and whether it was closed."""

    def __init__(self, items: list[str], fail: Exception | None = None) -> None:
        self.items = items
        self.fail = fail
        self.made: list[str] = []
        self.closed = asyncio.Event()

    async def generate(self) -> AsyncIterator[str]:
        try:
            for item in self.items:
                self.made.append(item)
                yield item
            if self.fail is not None:
                raise self.fail
        finally:
            self.closed.set()


async def test_a_stream_gives_its_chunks_as_they_come_each_made_once_the_last_is_taken():
    stream = Stream(["a", "b", "c"])
    got = []
    async with play(StreamingResponse(stream.generate(), media_type="text/plain")) as played:
        assert played.status == 200 and (b"content-type", b"text/plain; charset=utf-8") in played.headers
        assert played.body == b""
        async for chunk in played.chunks:
            got.append(chunk)
            await asyncio.sleep(0)  # the generator does not run ahead of the caller
            assert stream.made == ["a", "b", "c"][:len(got)]
    assert got == [b"a", b"b", b"c"]
    assert stream.closed.is_set()


async def test_a_stream_runs_its_background_after_the_caller_took_every_chunk():
    events: list[str] = []
    stream = Stream(["a", "b"])
    response = StreamingResponse(stream.generate(), background=BackgroundTask(events.append, "post_predict"))
    async with play(response) as played:
        async for chunk in played.chunks:
            events.append(chunk.decode())
        events.append("end")
    assert events == ["a", "b", "end", "post_predict"]


async def test_leaving_a_stream_early_closes_its_generator():
    stream = Stream(["a", "b", "c"])
    async with play(ItemStream(stream.generate())) as played:
        async for _ in played.chunks:
            break
    assert stream.closed.is_set() and stream.made == ["a"]


async def test_a_cancelled_caller_closes_the_stream_without_its_background():
    ran: list[str] = []
    taken = asyncio.Event()
    stream = Stream(["a", "b", "c"])

    async def caller() -> None:
        response = ItemStream(stream.generate(), background=BackgroundTask(ran.append, "post_predict"))
        async with play(response) as played:
            async for _ in played.chunks:
                taken.set()
                await asyncio.get_running_loop().create_future()  # a slow client: the caller waits here

    task = asyncio.ensure_future(caller())
    await asyncio.wait_for(taken.wait(), TIMEOUT)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert stream.closed.is_set() and stream.made == ["a"] and ran == []


async def test_a_stream_that_fails_raises_its_error_after_the_chunks_made_before():
    stream = Stream(["a"], fail=ValueError("the model broke"))
    got = []
    with pytest.raises(ValueError, match="the model broke"):
        async with play(StreamingResponse(stream.generate())) as played:
            async for chunk in played.chunks:
                got.append(chunk)
    assert got == [b"a"]


async def test_an_app_streams_when_its_first_body_says_more_follows_and_read_joins_it():
    async def app(scope, receive, send):
        await send({"type": "http.response.start", "status": 200, "headers": []})
        for part in (b"one ", b"", b"two"):
            await send({"type": "http.response.body", "body": part, "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    async with play(app) as played:
        assert played.chunks is not None
        assert await played.read() == b"one two"


async def test_a_stream_with_one_final_body_is_whole():
    async def app(scope, receive, send):
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    async with play(app) as played:
        assert (played.status, played.body, played.chunks) == (204, b"", None)

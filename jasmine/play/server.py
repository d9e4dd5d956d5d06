"""``jasmine play``: a world model in the browser, one world per tab over a WebSocket (Starlette on uvicorn).

Protocol on ``/ws``. The page sends JSON text messages, and binary messages that are image uploads:

    {"type": "level"} or {"type": "level", "index": i}   start from a held-out episode's first frames
    {"type": "action", "code": k}                         generate the next frame after action k
    {"type": "reset"}                                     back to the world's first frames
    {"type": "gif"}                                       the session so far, as a GIF
    <binary PNG or JPEG>                                  start from this image (Genie's image prompt)

The server answers each with one message: ``hello`` (on connecting: bindings, frame shape,
limits), ``frame`` (a PNG data URL, t, code, label, latency_ms), ``gif`` (base64) or ``error``
(what was wrong). A bad message never ends the session, nor the server. Idle sessions are
closed (code 4001) and freed; past ``--max-sessions`` a new tab is turned away (code 4002).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import math
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from jasmine.play.guard import Guard, is_loopback
from jasmine.play.world import Game, PlayError, World, encode_gif
from jasmine.sample.clips import InferenceDtype

STATIC = Path(__file__).parent / "static"
MAX_TEXT = 4096
log = logging.getLogger("jasmine.play")


@dataclass(frozen=True)
class PlayArgs:
    """Play a dynamics run in the browser: arrows/space/number keys pick actions, each press makes a frame."""

    run: Path
    """Dynamics run directory (MaskGIT or causal)."""
    data: Path | None = None
    """Dataset whose held-out episodes start levels and whose actions label the codes (default: the run's own)."""
    split: str = "test"
    """Split the levels come from."""
    host: str = "127.0.0.1"
    """Interface to listen on (loopback by default: anyone who can reach the port can use the model)."""
    port: int = 7860
    context: int = 1
    """Frames a level starts from."""
    temperature: float | None = None
    """Sampling temperature (default: the run's validation sampling)."""
    steps: int | None = None
    """MaskGIT steps per frame (default: the run's validation sampling)."""
    seed: int = 0
    """Sampling seed: the same level and actions give the same frames."""
    dtype: InferenceDtype = "run"
    """What the model computes in: run (its training --dtype; auto: bf16 on GPU, float32 on CPU) | float32 |
    bfloat16 (weights stored in bf16: on CPU MaskGIT and diffusion frames ~20% faster, causal ~5%; figures
    within noise: docs/benchmarks.md)."""
    max_sessions: int = 16
    """Tabs served at once."""
    idle_minutes: float = 10.0
    """A tab that sends nothing for this long is closed and its world freed."""
    max_upload_mb: float = 4.0
    """Largest image upload accepted."""


class Session:
    """One tab: its world and what it asked for last."""

    def __init__(self, game: Game, seed: int):
        self.game, self.seed = game, seed
        self.world: World | None = None
        self.next_level = 0
        self.last_active = time.monotonic()

    def handle(self, msg: dict | None, data: bytes | None, max_upload: int) -> dict | Callable[[], dict]:
        """The reply to one parsed message or upload (runs in a worker thread, holding the model lock: it may run the
        model); a GIF comes back as a function that encodes it, to run after the lock is released."""
        if data is not None:
            if len(data) > max_upload:
                raise PlayError(
                    f"the upload is {len(data) / 2**20:.1f} MiB; at most {max_upload / 2**20:.1f} MiB is accepted"
                )
            self.world = self.game.world_from_image(data, self.seed)
            return self.world.message()
        kind = msg["type"]
        if kind == "level":
            index = msg.get("index", self.next_level)
            if isinstance(index, bool) or not isinstance(index, int) or index < 0:
                raise PlayError(f'"index" must be a non-negative integer, got {index!r}')
            self.world, self.next_level = self.game.world_from_level(index, self.seed), index + 1
            return self.world.message()
        if self.world is None:
            raise PlayError("no world yet: start a level or upload an image first")
        if kind == "action":
            if "code" not in msg:
                raise PlayError('an action message needs "code", e.g. {"type": "action", "code": 0}')
            self.world.step(msg["code"])
        elif kind == "reset":
            self.world.reset()
        else:  # gif: copy the frames now, encode later
            frames = self.world.gif_frames()
            return lambda: {"type": "gif", "data": base64.b64encode(encode_gif(frames)).decode(), "frames": len(frames)}
        return self.world.message()


MESSAGES = ("level", "action", "reset", "gif")


def parse(text: str) -> dict:
    """A message as a dict with a known "type"; PlayError naming what is wrong otherwise."""
    if len(text) > MAX_TEXT:
        raise PlayError(f"message too long ({len(text)} characters; at most {MAX_TEXT})")
    try:
        msg = json.loads(text)
    except (ValueError, RecursionError):
        raise PlayError(f"malformed message (not JSON): {text[:60]!r}") from None
    if not isinstance(msg, dict) or not isinstance(msg.get("type"), str):
        raise PlayError('a message is a JSON object with a string "type", e.g. {"type": "action", "code": 0}')
    if msg["type"] not in MESSAGES:
        raise PlayError(f"unknown message type {msg['type'][:40]!r}; use one of {', '.join(MESSAGES)}")
    return msg


CONNECTION_SLACK = 8
"""Connections allowed beyond ``--max-sessions``: page and static-file loads, and a full server's refusals."""
SEND_TIMEOUT_S = 30.0
"""A reply a client does not read within this long closes its session (its world is freed)."""


def make_app(
    game: Game,
    *,
    seed: int = 0,
    max_sessions: int = 16,
    idle_s: float = 600.0,
    max_upload: int = 4 * 2**20,
    host: str = "127.0.0.1",
    token: str | None = None,
    send_timeout: float = SEND_TIMEOUT_S,
):
    """The Starlette app: the page at ``/``, its files at ``/static``, worlds on ``/ws``; behind :class:`Guard`
    (served only to its own pages on ``host``; ``token`` required on ``/ws`` when given)."""
    from starlette.applications import Starlette
    from starlette.concurrency import run_in_threadpool
    from starlette.responses import FileResponse
    from starlette.routing import Mount, Route, WebSocketRoute
    from starlette.staticfiles import StaticFiles
    from starlette.websockets import WebSocket, WebSocketDisconnect

    sessions: dict[WebSocket, Session] = {}
    model_lock = asyncio.Lock()  # one generation at a time: latency stays predictable, JAX stays uncontended

    async def endpoint(ws: WebSocket) -> None:
        await ws.accept()
        if len(sessions) >= max_sessions:
            await ws.send_json({"type": "error", "message": f"the server is full ({max_sessions} sessions); try later"})
            await ws.close(code=4002, reason="server full")
            return
        session = sessions[ws] = Session(game, seed)
        try:
            await ws.send_json({**game.info(), "max_upload": max_upload, "idle_s": idle_s})
            while True:
                msg = await ws.receive()
                if msg["type"] == "websocket.disconnect":
                    break
                session.last_active = math.inf  # being answered: never idle, however long the model takes
                try:
                    data = msg.get("bytes")
                    parsed = None if data is not None else parse(msg.get("text") or "")  # before the lock: bounded
                    async with model_lock:
                        reply = await run_in_threadpool(session.handle, parsed, data, max_upload)
                    if callable(reply):  # slow, model-free work (a GIF) runs outside the lock
                        reply = await run_in_threadpool(reply)
                except PlayError as e:
                    reply = {"type": "error", "message": str(e)}
                except Exception as e:  # a bug must cost one reply, never the server
                    log.exception("play: request failed")
                    reply = {"type": "error", "message": f"internal error ({type(e).__name__}; see the server's log)"}
                await asyncio.wait_for(ws.send_json(reply), send_timeout)  # a client that stops reading is dropped
                if session.world is not None and session.world.stream.unsettled:  # the frame is out: cache it now
                    try:
                        async with model_lock:
                            await run_in_threadpool(session.world.settle)
                    except Exception:  # the next action retries it and reports what fails
                        log.exception("play: writing a frame into the caches failed")
                session.last_active = time.monotonic()  # idle counts from the last reply
        except (WebSocketDisconnect, RuntimeError):  # the tab went away, or the reaper closed it
            pass
        except TimeoutError:
            log.warning("play: closed a session whose client stopped reading")
            with contextlib.suppress(Exception):
                await ws.close(code=4003, reason="not reading")
        finally:
            sessions.pop(ws, None)

    async def reaper() -> None:
        while True:
            await asyncio.sleep(min(idle_s / 4, 5.0))
            now = time.monotonic()
            for ws, s in list(sessions.items()):
                if now - s.last_active > idle_s:
                    sessions.pop(ws, None)
                    with contextlib.suppress(Exception):
                        await ws.send_json({"type": "error", "message": "closed after being idle; reload to play"})
                        await ws.close(code=4001, reason="idle")

    @contextlib.asynccontextmanager
    async def lifespan(app):
        task = asyncio.create_task(reaper())
        yield
        task.cancel()

    app = Starlette(
        routes=[
            Route("/", lambda request: FileResponse(STATIC / "index.html")),
            Mount("/static", StaticFiles(directory=STATIC)),
            WebSocketRoute("/ws", endpoint),
        ],
        lifespan=lifespan,
    )
    app.state.sessions = sessions
    guarded = Guard(app, host, token)
    guarded.state = app.state
    return guarded


def server_config(app, host: str, port: int, max_upload: int, max_sessions: int = 16):
    """uvicorn's settings for play, bounded: WebSocket messages (``max_upload``), open connections (the sessions and
    a few page loads; more get 503), request headers (16 KiB), idle keep-alive (5 s), and pings that close a
    connection whose client stopped answering (20 s)."""
    import uvicorn

    return uvicorn.Config(
        app,
        host=host,
        port=port,
        log_level="warning",
        ws_max_size=2 * max_upload,
        ws_max_queue=4,
        ws_ping_interval=20.0,
        ws_ping_timeout=20.0,
        limit_concurrency=max_sessions + CONNECTION_SLACK,
        h11_max_incomplete_event_size=16 * 1024,
        timeout_keep_alive=5,
    )


class Background:
    """A uvicorn server in a thread (tests, ``bench play``): ``with Background(app) as url: ...``."""

    def __init__(self, app, host: str = "127.0.0.1", port: int = 0, max_upload: int = 4 * 2**20, max_sessions=16):
        import uvicorn

        self.server = uvicorn.Server(server_config(app, host, port, max_upload, max_sessions))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> str:
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("the play server did not start")
            time.sleep(0.02)
        host, port = self.server.servers[0].sockets[0].getsockname()[:2]
        return f"http://{host}:{port}"

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)


def play(args: PlayArgs) -> None:
    import uvicorn

    from jasmine.play.world import load_game

    if args.max_sessions < 1 or args.idle_minutes <= 0 or args.max_upload_mb <= 0:
        raise ValueError("--max-sessions, --idle-minutes and --max-upload-mb must be positive")
    game = load_game(
        args.run, args.data, args.split, args.context, temperature=args.temperature, steps=args.steps, dtype=args.dtype
    )
    max_upload = int(args.max_upload_mb * 2**20)
    token = None if is_loopback(_resolve(args.host)) else secrets.token_urlsafe(24)
    app = make_app(
        game,
        seed=args.seed,
        max_sessions=args.max_sessions,
        idle_s=args.idle_minutes * 60,
        max_upload=max_upload,
        host=args.host,
        token=token,
    )
    levels = (
        f"{len(game.levels)} levels from {game.levels.index.root}'s {args.split} split"
        if game.levels
        else "no dataset (--data): start from uploaded images"
    )
    print(
        f"{game.family} world model from {args.run} (computing in {game.dtype}): {game.num_codes} actions, "
        f"frames {game.frame_shape}, {levels}"
    )
    print(f"compiled the sampler in {game.warm_up():.1f}s")
    for row in game.bindings.describe():
        print(f"  {row['label']:<40} keys: {' '.join(row['keys']) or '-'}")
    if token is not None:
        print(f"warning: listening on {args.host}: anyone who can reach this port and has the URL (with its token) "
              "can use the model")  # fmt: skip
    print(f"open http://{args.host}:{args.port}/{'?token=' + token if token else ''}  (Ctrl-C to stop)", flush=True)
    uvicorn.Server(server_config(app, args.host, args.port, max_upload, args.max_sessions)).run()


def _resolve(host: str) -> str:
    import socket

    try:
        return socket.gethostbyname(host)
    except OSError:
        return "0.0.0.0"

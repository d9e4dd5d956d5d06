"""jasmine play: key bindings, worlds, sessions, bad requests and a fuzz test on loopback, and a real browser."""

import base64
import io
import json
import os
import re
import shutil
import time
from dataclasses import replace

import numpy as np
import pytest
from conftest import MICRO_DYN, build_once, cli, write_synthetic
from PIL import Image

from jasmine.config import DynamicsTrainConfig, OptimConfig
from jasmine.eval.steering import action_codes, best_code, key_actions
from jasmine.models.dynamics import DynamicsConfig
from jasmine.models.tokenizer import TokenizerConfig
from jasmine.play.world import Bindings, PlayError, World, decode_upload

pytest.importorskip("starlette")
RUN = dict(
    steps=2,
    batch_size=2,
    seq_len=4,
    image_size=(16, 16, 3),
    log_every=1,
    val_every=2,
    val_batches=1,
    ckpt_every=2,
    optim=OptimConfig(lr=3e-3, warmup_steps=1, decay_fraction=0.0),
)
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture(scope="session")
def play_runs(runs, shared_root):
    """A dataset with a test split and a barely trained MaskGIT run on the shared micro tokenizer and LAM."""
    from jasmine.train.components import COMPONENTS
    from jasmine.train.loop import train

    def build(root):
        write_synthetic(root / "data", lengths=(40, 33, 25, 60), splits=("train", "test"), frame_shape=(16, 16, 3))
        train(
            DynamicsTrainConfig(
                data=root / "data",
                out=root / "dyn",
                tokenizer=runs / "tok",
                lam=runs / "lam",
                model=MICRO_DYN,
                **{**RUN, "seq_len": 5, "optim": replace(RUN["optim"], lr=1e-5)},
            ),
            COMPONENTS["dynamics"],
            progress=False,
        )  # barely trained: its frames still vary with the action

    return build_once(shared_root / "play", "play", build)


@pytest.fixture(scope="module")
def game(play_runs):
    from jasmine.play.world import load_game

    return load_game(play_runs / "dyn", play_runs / "data")


def png(frame: np.ndarray, fmt="PNG") -> bytes:
    buf = io.BytesIO()
    Image.fromarray(frame).save(buf, format=fmt)
    return buf.getvalue()


def test_bindings_from_a_hand_made_count_matrix():
    meanings = ["NOOP", "LEFT", "RIGHT", "UP"]
    counts = np.array(
        [
            [50, 10, 10, 10],  # code 0: mostly NOOP, but gets the most LEFT transitions too
            [0, 8, 0, 0],  # code 1: always LEFT, less often
            [5, 0, 30, 20],  # code 2: RIGHT and UP
            [0, 0, 0, 0],
        ]
    )  # code 3: unused
    # LEFT: P(L|k)P(k|L) = 10/80*10/18 = .069 for code 0, 8/8*8/18 = .44 for code 1 → 1
    assert best_code(counts, 1) == 1 and best_code(counts, 2) == 2 and best_code(counts, 3) == 2
    assert best_code(np.zeros((2, 2)), 0) is None
    b = Bindings.for_codes(4, meanings=meanings, counts_KA=counts)
    assert b.keys == {"1": 0, "2": 1, "3": 2, "4": 3, "ArrowLeft": 1, "ArrowRight": 2, "ArrowUp": 2, " ": 2}
    assert b.labels[0] == "code 0: NOOP 62%, LEFT 12%" and b.labels[3] == "code 3: unused"
    assert b.describe()[2]["keys"] == ["3", "ArrowRight", "ArrowUp", "Space"]
    gt = Bindings.for_codes(4, meanings=["NOOP", "FIRE", "LEFT", "DOWN"], gt_actions=True)  # keys = the actions
    assert gt.labels == ["NOOP", "FIRE", "LEFT", "DOWN"]
    assert gt.keys == {"1": 0, "2": 1, "3": 2, "4": 3, "ArrowLeft": 2, "ArrowDown": 3, " ": 1}
    assert Bindings.for_codes(12).keys == {str(k + 1): k for k in range(9)}  # no actions known: number keys only


def test_eval_drives_key_mapped_rollouts_with_exactly_plays_bindings():
    """`jasmine eval`'s key-mapped rollouts send each real action's code; a key in play sends the same code."""
    rng = np.random.default_rng(0)
    meanings = ["LEFT+DOWN", "LEFT", "LEFT+UP", "DOWN", "NOOP", "UP", "RIGHT+DOWN", "RIGHT", "RIGHT+UP"]
    for _ in range(20):
        counts = rng.integers(0, 20, (6, 9)) * (rng.random((6, 9)) < 0.6)
        keys = Bindings.for_codes(6, meanings=meanings, counts_KA=counts).keys
        table = action_codes(counts)
        for key, action in key_actions(meanings).items():
            if counts[:, action].sum():
                assert keys[key] == table[action], (key, counts)


def test_world_frames_are_the_rollouts_frames(game):
    """A world stepped one action at a time shows exactly the decoded frames of ``Rollout.run``."""
    import jax

    episode, frames, _ = game.levels.get(1)
    codes = [3, 0, 2, 2, 1, 0, 3]  # 1 + 7 frames: past seq_len 5 (slides) and across tokenizer chunks of 4
    world = World(game, frames[None], np.zeros((1, 0), np.int32), 5, "test")
    shown = np.stack([frames[0]] + [world.step(c) for c in codes])
    ids = game.roll.run(game.roll.encode(frames[None]), np.array([codes]), jax.random.key(5), num_frames=len(codes))
    want = (np.clip(game.roll.decode(ids)[0], 0, 1) * 255).round().astype(np.uint8)
    np.testing.assert_array_equal(shown[1:], want[1:])
    assert game.window == 4 and len(world.frames) == 8
    world.reset()  # back to the start: the same actions give the same frames
    np.testing.assert_array_equal(np.stack([world.step(c) for c in codes]), shown[1:])
    firsts = {World(game, frames[None], np.zeros((1, 0), np.int32), 5, "t").step(c).tobytes() for c in range(4)}
    assert len(firsts) > 1, "different actions should give different frames"
    gif = Image.open(io.BytesIO(world.gif()))
    assert gif.n_frames == 8 and gif.size == (64, 64)


@pytest.mark.parametrize("family", ["causal", "diffusion"])
def test_other_families_with_ground_truth_actions_play_the_rollouts_frames(family):
    """The other families and the other action source: a Genie on real actions, stepped by a World."""
    import jax
    from flax import nnx

    from jasmine.models.genie import Genie
    from jasmine.models.mae import MAEConfig
    from jasmine.play.world import Game
    from jasmine.sample.rollout import Rollout, SampleOptions

    arch = dict(patch_size=8, model_dim=16, ffn_dim=32, num_blocks=1, num_heads=2, latent_dim=4)
    tok = MAEConfig(**arch) if family == "diffusion" else TokenizerConfig(**arch, num_latents=8)
    dyn = DynamicsConfig(model_dim=16, ffn_dim=32, num_blocks=1, num_heads=2)
    genie = Genie(
        tok, dyn, (16, 16, 3), action_source="gt", num_actions=5, family=family, tokenizer_window=2, rngs=nnx.Rngs(0)
    )
    roll = Rollout(genie, 4, SampleOptions(steps=3) if family == "diffusion" else SampleOptions())
    meanings = ["NOOP", "LEFT", "RIGHT", "UP", "FIRE"]
    game = Game(roll, Bindings.for_codes(5, meanings=meanings, gt_actions=True), (16, 16, 3), family=family)
    assert game.bindings.keys["ArrowRight"] == 2 and game.bindings.keys[" "] == 4
    ctx = np.random.default_rng(0).integers(0, 256, (1, 1, 16, 16, 3), dtype=np.uint8)
    codes = [2, 4, 1, 0, 3]  # past the window of 4
    world = World(game, ctx, np.zeros((1, 0), np.int32), 1, "test")
    shown = np.stack([world.step(c) for c in codes])
    ids = roll.run(roll.encode(ctx), np.array([codes]), jax.random.key(1), num_frames=len(codes))
    want = (np.clip(roll.decode(ids)[0, 1:], 0, 1) * 255).round().astype(np.uint8)
    assert np.abs(shown.astype(int) - want).max() <= 1  # latents may differ in the last bits; frames by <= 1 level


def test_uploads_are_checked(game):
    frame = np.random.default_rng(0).integers(0, 256, (40, 30, 3), dtype=np.uint8)
    assert decode_upload(png(frame), (16, 16, 3)).shape == (16, 16, 3)
    assert decode_upload(png(frame, "JPEG"), (16, 16, 3)).dtype == np.uint8
    for bad, why in [
        (b"hello", "not a readable PNG or JPEG"),
        (png(frame)[:60], "not a readable PNG or JPEG"),
        (png(frame, "GIF"), "not a readable PNG or JPEG"),
        (png(frame, "BMP"), "not a readable PNG or JPEG"),
        (png(np.zeros((5000, 4000, 3), np.uint8)), "at most 16,777,216 pixels"),
    ]:
        with pytest.raises(PlayError, match=why):
            decode_upload(bad, (16, 16, 3))
    world = game.world_from_image(png(frame), 0)
    assert world.frames[0].shape == (16, 16, 3) and world.step(1).shape == (16, 16, 3)


def test_every_bad_message_gets_a_clear_error_and_the_session_goes_on(game):
    from jasmine.play.server import Session, parse

    s = Session(game, seed=0)

    def ask(text):  # as the server does: parse (before the model lock), handle, then encode what is deferred
        reply = s.handle(parse(text), None, 1000)
        return reply() if callable(reply) else reply

    cases = [
        ("not json", "malformed message"),
        ("[1, 2]", 'JSON object with a string "type"'),
        ('{"type": 3}', 'string "type"'),
        ('{"type": "jump"}', "unknown message type 'jump'"),
        ('{"type": "action", "code": 1}', "no world yet"),
        ("[" * 5000, "message too long"),
        ('{"type": "level", "index": -1}', '"index" must be a non-negative integer'),
        ('{"type": "level", "index": true}', '"index" must be a non-negative integer'),
    ]
    for text, why in cases:
        with pytest.raises(PlayError, match=why):
            ask(text)
    assert ask('{"type": "level"}')["type"] == "frame"
    for text, why in [
        ('{"type": "action"}', 'needs "code"'),
        ('{"type": "action", "code": 4}', "unknown action 4"),
        ('{"type": "action", "code": true}', "unknown action True"),
        ('{"type": "action", "code": "1"}', "unknown action '1'"),
        ('{"type": "action", "code": 1.0}', "unknown action 1.0"),
    ]:
        with pytest.raises(PlayError, match=why):
            ask(text)
    with pytest.raises(PlayError, match=r"the upload is 0.0 MiB; at most 0.0 MiB"):
        s.handle(None, b"x" * 1001, 1000)
    reply = ask('{"type": "action", "code": 2}')
    assert reply["t"] == 1 and reply["code"] == 2 and reply["image"].startswith("data:image/png;base64,")
    assert ask('{"type": "reset"}')["t"] == 0
    assert callable(s.handle(parse('{"type": "gif"}'), None, 1000)), "the GIF is encoded after the lock"
    gif = ask('{"type": "gif"}')
    assert gif["frames"] == 1 and base64.b64decode(gif["data"])[:6] == b"GIF89a"


def test_tabs_do_not_disturb_each_other_and_idle_ones_are_freed(game):
    from starlette.testclient import TestClient
    from starlette.websockets import WebSocketDisconnect

    from jasmine.play.server import make_app

    def frames_of(ws, codes):
        return [ws.receive_json()["image"] for _ in [ws.send_json({"type": "action", "code": c}) for c in codes]]

    app = make_app(game, max_sessions=2, idle_s=0.6, host="testserver")  # the name TestClient uses
    with TestClient(app) as client:
        with client.websocket_connect("/ws") as a:
            assert a.receive_json()["type"] == "hello"
            a.send_json({"type": "level", "index": 2})
            a.receive_json()
            alone = frames_of(a, [1, 2, 3, 0])
            a.send_json({"type": "reset"})
            a.receive_json()
            with client.websocket_connect("/ws") as b:
                b.receive_json()
                b.send_json({"type": "level", "index": 0})
                b.receive_json()
                mixed = []
                for c in [1, 2, 3, 0]:  # interleave the other tab's actions with this one's
                    mixed += frames_of(a, [c])
                    frames_of(b, [3 - c])
                assert mixed == alone
                with client.websocket_connect("/ws") as c:  # a third tab is over --max-sessions 2
                    assert "the server is full (2 sessions)" in c.receive_json()["message"]
                    with pytest.raises(WebSocketDisconnect) as closed:
                        c.receive_json()
                    assert closed.value.code == 4002
            assert len(app.state.sessions) == 1
            time.sleep(1.0)  # tab a says nothing for longer than idle_s
            assert "closed after being idle" in a.receive_json()["message"]
            assert len(app.state.sessions) == 0


def test_a_session_being_answered_is_never_idle(game, monkeypatch):
    """Idle time counts from the last reply: a reply that takes longer than idle_s (a slow machine) still arrives."""
    from starlette.testclient import TestClient

    from jasmine.play import server

    def slow(self, msg, data, max_upload):
        time.sleep(1.0)
        return {"type": "frame", "image": "slow"}

    monkeypatch.setattr(server.Session, "handle", slow)
    app = server.make_app(game, idle_s=0.6, host="testserver")
    with TestClient(app) as client, client.websocket_connect("/ws") as ws:
        ws.receive_json()
        ws.send_json({"type": "action", "code": 0})
        assert ws.receive_json() == {"type": "frame", "image": "slow"}
        assert len(app.state.sessions) == 1


def test_the_server_writes_a_frame_into_the_caches_after_sending_it(game, monkeypatch):
    """The reply to an action goes out before the frame is written into the dynamics' caches (``World.settle``,
    a pass play's latency need not wait for), and the write happens before the next action."""
    import threading

    from starlette.testclient import TestClient

    from jasmine.play import server

    replied, seen, settle = threading.Event(), [], World.settle

    def settle_after_the_reply(self):
        if self.stream.unsettled:
            seen.append(replied.wait(10.0))  # True: the test had the reply before the write began
        return settle(self)

    monkeypatch.setattr(World, "settle", settle_after_the_reply)
    app = server.make_app(game, host="testserver")
    with TestClient(app) as client, client.websocket_connect("/ws") as ws:
        ws.receive_json()
        ws.send_json({"type": "level", "index": 0})
        assert ws.receive_json()["type"] == "frame" and seen == []  # nothing drawn: nothing to write
        ws.send_json({"type": "action", "code": 1})
        assert ws.receive_json()["t"] == 1
        replied.set()
        world = next(iter(app.state.sessions.values())).world
        deadline = time.monotonic() + 10
        while world.stream.unsettled and time.monotonic() < deadline:
            time.sleep(0.01)
        assert seen == [True] and not world.stream.unsettled
        ws.send_json({"type": "action", "code": 2})
        assert ws.receive_json()["t"] == 2 and seen in ([True], [True, True])  # its step had nothing left to write


def test_connections_headers_and_clients_that_stop_reading_are_bounded(game):
    """A real server: connections beyond --max-sessions + slack get 503, and the page is served again once they
    close; a reply the client does not take in time closes its session and frees its world."""
    import socket

    import httpx
    from starlette.testclient import TestClient
    from starlette.websockets import WebSocketDisconnect

    from jasmine.play.server import CONNECTION_SLACK, Background, make_app

    with Background(make_app(game, max_sessions=1), max_sessions=1) as url:
        host, port = url.split("//")[1].split(":")
        held = [socket.create_connection((host, int(port))) for _ in range(1 + CONNECTION_SLACK)]
        try:
            time.sleep(0.3)  # the server has accepted them all
            assert httpx.get(url + "/").status_code == 503
        finally:
            for c in held:
                c.close()
        time.sleep(0.3)
        assert httpx.get(url + "/").status_code == 200
    app = make_app(game, host="testserver", send_timeout=0.0)  # no reply can be sent in time
    with TestClient(app) as client, client.websocket_connect("/ws") as ws:
        assert ws.receive_json()["type"] == "hello"
        ws.send_json({"type": "reset"})
        with pytest.raises(WebSocketDisconnect) as closed:
            ws.receive_json()
        assert closed.value.code == 4003 and len(app.state.sessions) == 0


def test_fuzz_on_loopback_then_play_still_works(game):
    from websockets.exceptions import ConnectionClosed
    from websockets.sync.client import connect

    from jasmine.play.server import Background, make_app

    rng = np.random.default_rng(0)

    def pick(options):
        return options[int(rng.integers(0, len(options)))]

    junk = [
        lambda: rng.bytes(int(rng.integers(0, 64))).decode("latin-1"),
        lambda: json.dumps(
            {
                "type": pick(["action", "level", "reset", "gif", "x"]),
                "code": pick([-1, 99, 1.5, None, "a", [1], {"a": 1}, 2**70]),
                "index": pick([-3, "b", None, 1e9]),
            }
        ),
        lambda: json.dumps(rng.integers(-5, 5, int(rng.integers(0, 5))).tolist()),
        lambda: '{"type": ' * int(rng.integers(1, 800)),  # up to 7,200 bytes: within the protocol limit
        lambda: rng.bytes(int(rng.integers(1, 3000))),
    ]  # binary: a broken upload
    max_upload = 4096
    with Background(make_app(game, max_upload=max_upload), max_upload=max_upload) as url:
        ws_url = url.replace("http", "ws") + "/ws"
        with connect(ws_url) as ws:
            ws.recv()
            replies = []
            for i in range(300):
                ws.send(junk[i % len(junk)]())
                replies.append(json.loads(ws.recv(timeout=60)))
            assert all(r["type"] in ("error", "frame", "gif") for r in replies)
            assert sum(r["type"] == "error" for r in replies) > 250
            ws.send(b"\x89PNG" + b"x" * (max_upload + 10))  # over the limit, under the protocol's: a clear error
            assert "at most 0.0 MiB is accepted" in json.loads(ws.recv(timeout=30))["message"]
        with connect(ws_url) as ws:  # over the protocol limit: this connection closes, the server stays up
            ws.recv()
            ws.send(b"x" * (3 * max_upload))
            with pytest.raises(ConnectionClosed):
                ws.recv(timeout=30)
        with connect(ws_url) as ws:
            assert json.loads(ws.recv())["type"] == "hello"
            ws.send('{"type": "level"}')
            assert json.loads(ws.recv(timeout=60))["t"] == 0
            ws.send('{"type": "action", "code": 1}')
            assert json.loads(ws.recv(timeout=60))["t"] == 1


def test_only_the_servers_own_pages_may_play(game):
    """A real uvicorn server on loopback: a WebSocket from a foreign Origin and a request with a foreign Host (DNS
    rebinding) are refused; its own page is served with a CSP; beyond loopback the token is required."""
    import httpx
    from websockets.exceptions import InvalidStatus
    from websockets.sync.client import connect

    from jasmine.play.server import Background, make_app

    with Background(make_app(game)) as url:
        ws_url, host = url.replace("http", "ws") + "/ws", url.split("//")[1]
        page = httpx.get(url + "/")
        assert page.status_code == 200 and "frame-ancestors 'none'" in page.headers["content-security-policy"]
        assert httpx.get(url + "/", headers={"Host": f"evil.example:{host.split(':')[1]}"}).status_code == 403
        assert httpx.get(url + "/static/play.js", headers={"Host": "evil.example"}).status_code == 403
        with pytest.raises(InvalidStatus) as refused:
            connect(ws_url, origin="http://evil.example")
        assert refused.value.response.status_code == 403
        with pytest.raises(InvalidStatus):
            connect(ws_url, additional_headers={"Host": "evil.example"})
        with connect(ws_url, origin=url) as ws:  # the page's own origin
            assert json.loads(ws.recv())["type"] == "hello"
    with Background(make_app(game, host="0.0.0.0", token="s3cret")) as url:  # as `--host 0.0.0.0` would be served
        ws_url = url.replace("http", "ws") + "/ws"
        for bad in ("", "?token=guess"):
            with pytest.raises(InvalidStatus):
                connect(ws_url + bad)
        with connect(ws_url + "?token=s3cret") as ws:
            hello = json.loads(ws.recv())
            assert hello["type"] == "hello" and "/" not in hello["run"], "no paths are sent to clients"


def test_a_worlds_history_is_bounded(game, monkeypatch):
    from jasmine.play import world as W

    monkeypatch.setattr(W, "HISTORY", 3)
    episode, frames, _ = game.levels.get(0)
    world = World(game, frames[None], np.zeros((1, 0), np.int32), 0, "t")
    for c in [1, 2, 3, 0, 1, 2]:
        world.step(c)
    assert len(world.frames) == 3 and world.message()["t"] == 6 and len(world.codes) <= 2
    assert world.gif_frames().shape[0] == 3


def test_play_refuses_runs_of_the_wrong_kind(runs, play_runs):
    out = cli("play", "--run", runs / "tok")  # an error message, not an exception
    assert out.returncode != 0 and "is a TokenizerTrainConfig run; sampling needs a dynamics run" in out.stderr
    from jasmine.data.dataset import DataError
    from jasmine.play.world import load_game

    with pytest.raises(DataError, match="no split 'val'"):
        load_game(play_runs / "dyn", play_runs / "data", split="val")
    with pytest.raises(ValueError, match="--context 5 must be between 1 and the model's seq_len - 1 \\(4\\)"):
        load_game(play_runs / "dyn", play_runs / "data", context=5)


def test_a_real_browser_plays(game, tmp_path, monkeypatch):
    """Headless Chromium opens the page, starts a level, presses keys and sees frames that depend on the action."""
    if CHROMIUM is None:
        if os.environ.get("JASMINE_REQUIRE_BROWSER") or os.environ.get("CI"):
            pytest.fail("CI needs Chromium for the browser test: .ci/run installs it (apt-get install chromium)")
        pytest.skip("no Chromium: install it with `apt-get install chromium` (Debian) to run the browser test")
    sync_api = pytest.importorskip("playwright.sync_api")
    from jasmine.play.server import Background, make_app

    info = game.info
    markup = '<img src=x onerror="document.body.dataset.xss=1">'

    def info_with_markup():  # a dataset whose action names hold markup
        hello = info()
        hello["codes"][0] = {**hello["codes"][0], "label": markup}
        return hello

    monkeypatch.setattr(game, "info", info_with_markup)
    with Background(make_app(game)) as url, sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        strict = browser.new_page()  # under the page's own CSP (no eval), the page connects and plays
        response = strict.goto(url)
        assert "script-src 'self'" in response.headers["content-security-policy"]
        sync_api.expect(strict.locator("#conn")).to_have_text("connected", timeout=60_000)
        sync_api.expect(strict.locator("#world")).to_have_attribute(
            "src", re.compile("^data:image/png"), timeout=60_000
        )
        strict.keyboard.press("2")
        sync_api.expect(strict.locator("#frame-count")).to_have_text("1", timeout=60_000)
        page = browser.new_page(bypass_csp=True)  # the checks below evaluate JavaScript, which the CSP forbids
        page.goto(url)

        def frames():
            return int(page.evaluate("document.body.dataset.frames || '0'"))

        page.wait_for_function("document.body.dataset.frames === '1'", timeout=60_000)  # the level's first frame
        assert page.locator("#actions button.action").count() == game.num_codes
        assert markup in page.text_content("#actions button.action >> nth=0"), "labels are shown as text"
        assert page.evaluate("document.body.dataset.xss") is None and page.locator("#actions img").count() == 0
        shown = {}
        for key in ["1", "2"]:
            before = frames()
            page.click("#reset")
            page.wait_for_function(f"Number(document.body.dataset.frames) > {before}")
            page.keyboard.press(key)
            page.wait_for_function("document.getElementById('frame-count').textContent === '1'")
            shown[key] = page.get_attribute("#world", "src")
        assert shown["1"] != shown["2"], "two different actions gave the same frame"
        for key in ["3", "4", "1"]:
            before = frames()
            page.keyboard.press(key)
            page.wait_for_function(f"Number(document.body.dataset.frames) > {before}")
        assert page.text_content("#frame-count") == "4" and page.locator("#history img").count() == 5
        assert page.text_content("#label").startswith("code 0") and "ms model" in page.text_content("#latency")
        page.screenshot(path=str(tmp_path / "play.png"))
        assert (tmp_path / "play.png").stat().st_size > 1000
        browser.close()

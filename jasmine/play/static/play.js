// jasmine play: one WebSocket per tab; each key press sends an action and shows the frame that comes back.
"use strict";
const $ = (id) => document.getElementById(id);
const HISTORY = 8;
let ws, hello = null, busy = false, queued = null, sentAt = 0, arrivals = [], frames = 0;

function connect() {
  const token = new URLSearchParams(location.search).get("token");  // required when play listens beyond loopback
  ws = new WebSocket((location.protocol === "https:" ? "wss://" : "ws://") + location.host + "/ws" +
                     (token ? "?token=" + encodeURIComponent(token) : ""));
  ws.onopen = () => { $("conn").textContent = "connected"; $("conn").className = ""; };
  ws.onclose = (e) => {
    $("conn").textContent = "disconnected" + (e.reason ? ` (${e.reason})` : "") + " — reload to play";
    $("conn").className = "down";
  };
  ws.onmessage = (e) => receive(JSON.parse(e.data));
}

function send(msg) {
  if (!ws || ws.readyState !== WebSocket.OPEN) return;
  if (busy) { queued = msg; return; }           // at most one request in flight, the latest one waiting
  busy = true; sentAt = performance.now();
  if (msg instanceof ArrayBuffer) ws.send(msg); else ws.send(JSON.stringify(msg));
}

function done() {
  busy = false;
  if (queued !== null) { const m = queued; queued = null; send(m); }
}

function receive(msg) {
  if (msg.type === "hello") return setup(msg);
  done();
  if (msg.type === "error") { $("error").textContent = msg.message; return; }
  $("error").textContent = "";
  if (msg.type === "gif") return download(msg.data);
  if (msg.type === "frame") show(msg);
}

function setup(msg) {
  hello = msg;
  $("run").textContent = `${msg.family} · ${msg.run} · ${msg.frame_shape[0]}×${msg.frame_shape[1]}`;
  const box = $("actions");
  box.replaceChildren();
  for (const row of msg.codes) {
    const b = document.createElement("button");
    b.className = "action"; b.dataset.code = row.code;
    for (const k of row.keys) {  // text only: labels come from a dataset's metadata, never markup
      const kbd = document.createElement("kbd");
      kbd.textContent = k.replace("Arrow", "");
      b.appendChild(kbd);
    }
    b.appendChild(document.createTextNode(row.label));
    b.onclick = () => act(row.code);
    box.appendChild(b);
  }
  $("new-level").disabled = msg.levels === 0;
  if (msg.levels > 0) send({ type: "level" });
  else $("error").textContent = "no dataset: upload an image to start";
}

function act(code) { send({ type: "action", code }); }

function show(msg) {
  const img = $("world");
  img.src = msg.image;
  $("label").textContent = msg.label;
  $("frame-count").textContent = String(msg.t);
  const rtt = performance.now() - sentAt;
  $("latency").textContent = `${msg.latency_ms.toFixed(0)} ms model · ${rtt.toFixed(0)} ms round trip`;
  const now = performance.now();
  arrivals = arrivals.filter((t) => now - t < 5000).concat([now]);
  if (arrivals.length > 1) $("fps").textContent = ((arrivals.length - 1) / ((now - arrivals[0]) / 1000)).toFixed(1);
  for (const b of document.querySelectorAll("#actions button"))
    b.classList.toggle("active", msg.code !== null && Number(b.dataset.code) === msg.code);
  const strip = $("history");
  if (msg.code === null) strip.replaceChildren();
  const thumb = document.createElement("img");
  thumb.src = msg.image; thumb.title = `t=${msg.t}: ${msg.label}`;
  strip.appendChild(thumb);
  while (strip.children.length > HISTORY) strip.removeChild(strip.firstChild);
  frames += 1;
  document.body.dataset.frames = String(frames);   // for tests and scripts: frames shown so far
}

function download(b64) {
  const a = document.createElement("a");
  a.href = "data:image/gif;base64," + b64;
  a.download = "jasmine-play.gif";
  a.click();
}

document.addEventListener("keydown", (e) => {
  if (!hello || e.ctrlKey || e.metaKey || e.altKey) return;
  const code = hello.keys[e.key];
  if (code === undefined) return;
  e.preventDefault();
  act(code);
});
$("new-level").onclick = () => send({ type: "level" });
$("reset").onclick = () => send({ type: "reset" });
$("gif").onclick = () => send({ type: "gif" });
$("upload").onchange = async (e) => {
  const file = e.target.files[0];
  e.target.value = "";
  if (!file) return;
  if (hello && file.size > hello.max_upload) {
    $("error").textContent = `the image is ${(file.size / 2 ** 20).toFixed(1)} MiB; at most ${(hello.max_upload / 2 ** 20).toFixed(1)} MiB`;
    return;
  }
  send(await file.arrayBuffer());
};
connect();

// rtmo serve web page: plain JavaScript, no build step, no external files.
"use strict";

const $ = (id) => document.getElementById(id);
// RGB versions of rtmo/infer/draw.py's BGR side colours.
const SIDE_COLORS = { left: "rgb(255,165,0)", right: "rgb(0,128,255)", center: "rgb(0,200,0)" };
let MODEL = null; // /health: keypoint names, skeleton, sides

function numberOrNull(el) {
  const v = el.value.trim();
  return v === "" ? null : Number(v);
}

function limbSide(a, b) {
  const sa = MODEL.keypoints.sides[a], sb = MODEL.keypoints.sides[b];
  return sa === sb ? sa : "center";
}

// Draw every detection of a /predict or /ws answer onto ctx (coordinates in image pixels).
function drawPoses(ctx, result, kptThr) {
  const t = Math.max(1, Math.round(Math.max(result.width, result.height) / 320));
  ctx.lineWidth = t;
  ctx.font = `${10 + 4 * t}px sans-serif`;
  for (const det of result.detections) {
    const [x1, y1, x2, y2] = det.bbox;
    ctx.strokeStyle = "white";
    ctx.strokeRect(x1, y1, x2 - x1, y2 - y1);
    let label = det.conf.toFixed(2);
    if (det.track_id !== undefined && det.track_id >= 0) label = `id ${det.track_id} ${label}`;
    const w = ctx.measureText(label).width, h = 10 + 4 * t;
    const ty = Math.max(y1, h);
    ctx.fillStyle = "white";
    ctx.fillRect(x1, ty - h, w + 4, h);
    ctx.fillStyle = "black";
    ctx.fillText(label, x1 + 2, ty - 3);
    const k = det.keypoints;
    for (const [a, b] of MODEL.keypoints.skeleton) {
      if (k[a][2] >= kptThr && k[b][2] >= kptThr) {
        ctx.strokeStyle = SIDE_COLORS[limbSide(a, b)];
        ctx.beginPath();
        ctx.moveTo(k[a][0], k[a][1]);
        ctx.lineTo(k[b][0], k[b][1]);
        ctx.stroke();
      }
    }
    k.forEach((p, i) => {
      if (p[2] < kptThr) return;
      ctx.fillStyle = SIDE_COLORS[MODEL.keypoints.sides[i]];
      ctx.beginPath();
      ctx.arc(p[0], p[1], t + 1, 0, 2 * Math.PI);
      ctx.fill();
    });
  }
}

function setStatus(el, text, isError) {
  el.textContent = text;
  el.classList.toggle("error", Boolean(isError));
}

// ------------------------------------------------------------------ image mode
async function predictFile(file) {
  const canvas = $("canvas"), status = $("status");
  canvas.dataset.state = "busy";
  setStatus(status, `Sending ${file.name}…`);
  const form = new FormData();
  form.append("file", file, file.name);
  const params = new URLSearchParams();
  const thr = numberOrNull($("threshold"));
  if (thr !== null) params.set("threshold", thr);
  const t0 = performance.now();
  let answer;
  try {
    const resp = await fetch(`/predict?${params}`, { method: "POST", body: form });
    answer = await resp.json();
    if (!resp.ok) throw new Error(typeof answer.detail === "string" ? answer.detail : JSON.stringify(answer.detail));
  } catch (e) {
    canvas.dataset.state = "error";
    setStatus(status, `Error: ${e.message}`, true);
    return;
  }
  const rtt = performance.now() - t0;
  // The server applies the EXIF orientation (as mmpose decodes photos), so the page draws upright too.
  const bitmap = await createImageBitmap(file, { imageOrientation: "from-image" });
  canvas.width = answer.width;
  canvas.height = answer.height;
  const ctx = canvas.getContext("2d");
  ctx.drawImage(bitmap, 0, 0);
  drawPoses(ctx, answer, Number($("kpt-threshold").value));
  // one line per number array (a box, a keypoint) keeps the JSON readable
  $("json").textContent = JSON.stringify(answer, null, 1)
    .replace(/\[\s+([-\d.e,\s]+?)\s+\]/g, (m, inner) => `[${inner.replace(/\s+/g, "")}]`);
  const n = answer.detections.length;
  canvas.dataset.people = String(n);
  canvas.dataset.state = "done";
  setStatus(status, `${file.name}: ${answer.width}x${answer.height}, ${n} ${n === 1 ? "person" : "people"} · ` +
    `inference ${answer.timing_ms.inference.toFixed(0)} ms · round trip ${rtt.toFixed(0)} ms`);
  status.dataset.people = String(n);
}

$("file").addEventListener("change", (ev) => {
  if (ev.target.files.length) predictFile(ev.target.files[0]);
});

// ------------------------------------------------------------------ webcam mode
const live = { ws: null, stream: null, inFlight: 0, sentAt: new Map(), sent: 0, timer: null };
const grab = document.createElement("canvas");

function stopWebcam(message) {
  if (live.timer) cancelAnimationFrame(live.timer);
  if (live.ws) live.ws.close();
  if (live.stream) live.stream.getTracks().forEach((t) => t.stop());
  Object.assign(live, { ws: null, stream: null, inFlight: 0, timer: null });
  live.sentAt.clear();
  $("webcam-toggle").textContent = "Start webcam";
  if (message) setStatus($("ws-status"), message, true);
}

function sendFrame() {
  live.timer = requestAnimationFrame(sendFrame);
  const video = $("video");
  // At most one frame in flight: the camera runs faster than the model; the server drops extras anyway.
  if (!live.ws || live.ws.readyState !== WebSocket.OPEN || live.inFlight > 0 || !video.videoWidth) return;
  grab.width = video.videoWidth;
  grab.height = video.videoHeight;
  grab.getContext("2d").drawImage(video, 0, 0);
  live.inFlight++;
  grab.toBlob((blob) => {
    if (!live.ws || !blob) { live.inFlight = 0; return; }
    live.sentAt.set(live.sent++, performance.now());
    live.ws.send(blob);
  }, "image/jpeg", 0.8);
}

async function startWebcam() {
  try {
    live.stream = await navigator.mediaDevices.getUserMedia({ video: { width: 640, height: 480 }, audio: false });
  } catch (e) {
    setStatus($("ws-status"), `No camera: ${e.message}`, true);
    return;
  }
  const video = $("video");
  video.srcObject = live.stream;
  const params = new URLSearchParams({ track: $("track").checked ? 1 : 0, smooth: $("smooth").checked ? 1 : 0 });
  const thr = numberOrNull($("threshold"));
  if (thr !== null) params.set("threshold", thr);
  const proto = location.protocol === "https:" ? "wss" : "ws";
  const ws = new WebSocket(`${proto}://${location.host}/ws?${params}`);
  live.ws = ws;
  ws.onopen = () => setStatus($("ws-status"), "streaming");
  ws.onclose = () => { if (live.ws === ws) stopWebcam("connection closed"); };
  ws.onmessage = (ev) => {
    const msg = JSON.parse(ev.data);
    live.inFlight = 0;
    const t0 = live.sentAt.get(msg.frame_index);
    live.sentAt.delete(msg.frame_index);
    if (t0 !== undefined) $("ws-rtt").textContent = (performance.now() - t0).toFixed(0);
    $("ws-frames").textContent = String(msg.received);
    $("ws-dropped").textContent = String(msg.dropped);
    $("ws-latency").textContent = msg.latency_ms.toFixed(0);
    if (msg.fps) $("ws-fps").textContent = msg.fps.toFixed(1);
    if (msg.error) { setStatus($("ws-status"), msg.error, true); return; }
    const overlay = $("overlay");
    overlay.width = msg.width;
    overlay.height = msg.height;
    const ctx = overlay.getContext("2d");
    ctx.clearRect(0, 0, msg.width, msg.height);
    drawPoses(ctx, msg, Number($("kpt-threshold").value));
    $("ws-people").textContent = String(msg.detections.length);
  };
  $("webcam-toggle").textContent = "Stop webcam";
  sendFrame();
}

$("webcam-toggle").addEventListener("click", () => (live.stream ? stopWebcam() : startWebcam()));

// ------------------------------------------------------------------ tabs + model info
function showTab(name) {
  $("image-mode").hidden = name !== "image";
  $("webcam-mode").hidden = name !== "webcam";
  $("tab-image").classList.toggle("active", name === "image");
  $("tab-webcam").classList.toggle("active", name === "webcam");
  if (name !== "webcam" && live.stream) stopWebcam();
}
$("tab-image").addEventListener("click", () => showTab("image"));
$("tab-webcam").addEventListener("click", () => showTab("webcam"));

fetch("/health").then((r) => r.json()).then((h) => {
  MODEL = h;
  const [w, hgt] = h.input_size;
  $("model-info").textContent = `${h.model} · ${w}x${hgt} · ${h.backend}${h.device ? " on " + h.device : ""} · ` +
    `max batch ${h.batching.max_batch}`;
  document.body.dataset.ready = "1";
}).catch((e) => setStatus($("status"), `Server not reachable: ${e.message}`, true));

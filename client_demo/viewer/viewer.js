// The browser viewer: a spectator of one room, drawn top-down on a canvas.
//
// URL: http://HOST:PORT/?room=demo[&region=x0,y0,x1,y1]
// Per avatar: where it is drawn now (dead reckoning at the mapped server time), its
// predicted path, its last received sample and, under the demo (GET /demo/truth), its true
// position with a line to the drawn one. Under the demo the panel also shows the demo's
// comparison (GET /demo/compare): the render error of the GRU and of the classical methods
// (Kalman, constant velocity, interpolation, hold) as its bots measure it on the same
// draws, and what each costs on the wire per receiver. Under each avatar's name: the expert
// the server's online blend trusts most for it now and its weight (GET /experts). Tests read
// `window.avatarViewer`.

import { AvatarStream, DeadReckoner } from "./avatarstream.js";

const TRUTH_PERIOD_MS = 100; // poll /demo/truth
const TRUTH_RETRY_MS = 5000; // ... or this slowly while it answers 404
const COMPARE_PERIOD_MS = 1000; // poll /demo/compare (the demo's table changes once a second)
const HISTORY_S = 2.0; // drawn positions kept per avatar, to compare with truth at its own time
const ERROR_WINDOW = 20; // truth polls averaged for the error shown (2 s)
const MIN_FIT_M = 8; // fit never zooms in closer than this many metres across
const PALETTE = ["#4cc9f0", "#f72585", "#ffb703", "#06d6a0", "#9d8df1", "#fb8500", "#ff70a6", "#b5e48c",
  "#70d6ff", "#e76f51", "#c77dff", "#90be6d"];

const params = new URLSearchParams(location.search);
const room = params.get("room") || "demo";
const region = parseRegion(params.get("region"));
const wsUrl = `${location.protocol === "https:" ? "wss" : "ws"}://${location.host}/`;

const stream = new AvatarStream(wsUrl, { room, region });
const reckoner = new DeadReckoner();
reckoner.attach(stream);

const drawn = new Map(); // id -> [x, y], this frame
const history = new Map(); // id -> [[t, x, y], ...], last HISTORY_S seconds
const truth = { available: null, serverTime: null, avatars: new Map() };
const errors = { mean: null, max: null, window: [] };
const compare = { available: null, elapsed: null, methods: [] }; // the demo's table
const experts = { names: [], avatars: new Map() }; // GET /experts: the blend's weights per avatar
const EXPERTS_PERIOD_MS = 1000;
const FONTS = "system-ui, -apple-system, 'Segoe UI', Roboto, 'DejaVu Sans', sans-serif";
const NAME_FONT = `600 13px ${FONTS}`; // avatar names
const EXPERT_FONT = `400 11px ${FONTS}`; // the trusted expert under each name
const camera = { cx: 0, cy: 0, scale: 40, follow: true }; // scale: pixels per metre

window.avatarViewer = { stream, reckoner, drawn, truth, errors, compare, experts, expertLabel, camera, fit };

// -- DOM -------------------------------------------------------------------------------------

const canvas = document.getElementById("view");
const panel = document.getElementById("panel");
const ctx = canvas.getContext("2d");
const el = (id) => document.getElementById(id);
const ui = {
  conn: el("conn"), room: el("room"), model: el("model"), count: el("count"), tick: el("tick"),
  bytes: el("bytes"), downlink: el("downlink"), rtt: el("rtt"), offset: el("offset"), err: el("err"),
};
ui.room.textContent = room;
document.title = `avatar-stream · ${room}`;
el("fit").addEventListener("click", fit);

let width = 0;
let height = 0;
let dpr = 1;
function resize() {
  dpr = window.devicePixelRatio || 1;
  width = canvas.clientWidth;
  height = canvas.clientHeight;
  canvas.width = Math.round(width * dpr);
  canvas.height = Math.round(height * dpr);
}
window.addEventListener("resize", resize);
resize();

// world (x right, y up, metres) <-> screen (pixels)
const sx = (x) => width / 2 + (x - camera.cx) * camera.scale;
const sy = (y) => height / 2 - (y - camera.cy) * camera.scale;
const wx = (px) => camera.cx + (px - width / 2) / camera.scale;
const wy = (py) => camera.cy - (py - height / 2) / camera.scale;

// -- input: drag to pan, wheel to zoom about the cursor, F to fit -----------------------------

let drag = null;
canvas.addEventListener("pointerdown", (e) => {
  drag = { x: e.clientX, y: e.clientY, cx: camera.cx, cy: camera.cy };
  canvas.setPointerCapture(e.pointerId);
  canvas.classList.add("dragging");
});
canvas.addEventListener("pointermove", (e) => {
  if (!drag) return;
  camera.follow = false;
  camera.cx = drag.cx - (e.clientX - drag.x) / camera.scale;
  camera.cy = drag.cy + (e.clientY - drag.y) / camera.scale;
});
const endDrag = () => {
  drag = null;
  canvas.classList.remove("dragging");
};
canvas.addEventListener("pointerup", endDrag);
canvas.addEventListener("pointercancel", endDrag);
canvas.addEventListener(
  "wheel",
  (e) => {
    e.preventDefault();
    camera.follow = false;
    const x = wx(e.offsetX);
    const y = wy(e.offsetY);
    const unit = e.deltaMode === 1 ? 16 : e.deltaMode === 2 ? 400 : 1;
    camera.scale = clamp(camera.scale * Math.exp(-e.deltaY * unit * 0.0015), 0.5, 2000);
    camera.cx = x - (e.offsetX - width / 2) / camera.scale; // keep (x, y) under the cursor
    camera.cy = y + (e.offsetY - height / 2) / camera.scale;
  },
  { passive: false },
);
window.addEventListener("keydown", (e) => {
  if ((e.key === "f" || e.key === "F") && !e.ctrlKey && !e.metaKey && !e.altKey) fit();
});

/** Frame everything now and keep following it (until the next drag or wheel). */
function fit() {
  const target = fitTarget();
  if (target) Object.assign(camera, target);
  camera.follow = true;
}

function fitTarget() {
  let x0 = Infinity;
  let y0 = Infinity;
  let x1 = -Infinity;
  let y1 = -Infinity;
  const add = (x, y) => {
    if (!Number.isFinite(x) || !Number.isFinite(y)) return;
    x0 = Math.min(x0, x);
    x1 = Math.max(x1, x);
    y0 = Math.min(y0, y);
    y1 = Math.max(y1, y);
  };
  for (const [x, y] of drawn.values()) add(x, y);
  for (const h of history.values()) for (const [, x, y] of h) add(x, y);
  for (const id of reckoner.ids()) {
    const p = reckoner.path(id).points;
    for (let j = 0; j < p.length; j += 3) add(p[j], p[j + 1]);
  }
  if (truth.available) for (const [x, y] of truth.avatars.values()) add(x, y);
  if (x0 > x1) return null;
  const panelW = Math.min(panel.offsetWidth + 24, width * 0.45); // keep clear of the side panel
  const margin = 70; // px each side: room for labels and rings
  const w = Math.max(x1 - x0, MIN_FIT_M);
  const h = Math.max(y1 - y0, MIN_FIT_M);
  const scale = Math.max(1e-3, Math.min((width - panelW - 2 * margin) / w, (height - 2 * margin) / h));
  return { cx: (x0 + x1) / 2 + panelW / 2 / scale, cy: (y0 + y1) / 2, scale };
}

// -- truth (only under the demo) -------------------------------------------------------------

async function pollTruth() {
  const started = performance.now();
  let next = TRUTH_PERIOD_MS;
  try {
    const r = await fetch(`/demo/truth?room=${encodeURIComponent(room)}`, { cache: "no-store" });
    if (r.ok) {
      const j = await r.json();
      truth.serverTime = j.server_time;
      truth.avatars = new Map(Object.entries(j.avatars ?? {}));
      setTruthAvailable(true);
      scoreTruth();
    } else {
      setTruthAvailable(false);
      next = TRUTH_RETRY_MS;
    }
  } catch {
    next = TRUTH_RETRY_MS; // server down: the stream reconnects; truth comes back later
  }
  setTimeout(pollTruth, Math.max(0, next - (performance.now() - started)));
}

function setTruthAvailable(on) {
  if (truth.available === on) return;
  truth.available = on;
  for (const n of document.querySelectorAll(".truth-only")) n.toggleAttribute("hidden", !on); // svg too
  if (!on) {
    truth.avatars = new Map();
    errors.mean = errors.max = null;
    errors.window = [];
  }
}

// Compare each true position with where the avatar was drawn at that same server time.
function scoreTruth() {
  const t = truth.serverTime;
  let sum = 0;
  let max = 0;
  let n = 0;
  for (const [id, p] of truth.avatars) {
    const d = drawnAt(id, t);
    if (!d) continue;
    const e = Math.hypot(d[0] - p[0], d[1] - p[1]);
    if (!Number.isFinite(e)) continue;
    sum += e;
    max = Math.max(max, e);
    n += 1;
  }
  if (n === 0) return;
  errors.window.push(sum / n);
  if (errors.window.length > ERROR_WINDOW) errors.window.shift();
  errors.mean = errors.window.reduce((a, b) => a + b, 0) / errors.window.length;
  errors.max = max;
}

// -- the demo's comparison of methods (only under the demo) ------------------------------------

async function pollCompare() {
  let next = COMPARE_PERIOD_MS;
  try {
    const r = await fetch(`/demo/compare?room=${encodeURIComponent(room)}`, { cache: "no-store" });
    if (r.ok) {
      const j = await r.json();
      compare.elapsed = j.elapsed_s;
      compare.methods = Array.isArray(j.methods) ? j.methods : [];
      compare.available = true;
      showCompare();
    } else {
      compare.available = false;
      compare.methods = [];
      next = TRUTH_RETRY_MS;
    }
  } catch {
    next = TRUTH_RETRY_MS;
  }
  el("compare").hidden = !compare.available;
  setTimeout(pollCompare, next);
}

// -- the online blend's weights per avatar (GET /experts on the server) ------------------------

async function pollExperts() {
  try {
    const r = await fetch(`/experts?room=${encodeURIComponent(room)}`, { cache: "no-store" });
    if (r.ok) {
      const j = await r.json();
      experts.names = Array.isArray(j.experts) ? j.experts : [];
      experts.avatars = new Map(Object.entries(j.avatars ?? {}));
    }
  } catch {
    // server down: the stream reconnects; the weights come back with it
  }
  setTimeout(pollExperts, EXPERTS_PERIOD_MS);
}

// "net 0.82": the expert the blend trusts most for this avatar now, and its weight
function expertLabel(id) {
  const w = experts.avatars.get(id);
  if (!Array.isArray(w) || w.length !== experts.names.length || w.length === 0) return "";
  let k = 0;
  for (let j = 1; j < w.length; j++) if (w[j] > w[k]) k = j;
  return `${experts.names[k]} ${Number(w[k]).toFixed(2)}`;
}

function showCompare() {
  const num = (v, digits) => (typeof v === "number" && Number.isFinite(v) ? v.toFixed(digits) : "–");
  const rows = compare.methods.map((m) => {
    const tr = document.createElement("tr");
    tr.className = String(m.method);
    tr.title = `${m.method}: ${m.feed} feed, ${m.n ?? 0} draws`;
    for (const text of [String(m.method), num(m.mean, 3), num(m.p95, 3), num(m.kB_per_s, 1), num(m.records_per_s, 0)]) {
      const td = document.createElement("td");
      td.textContent = text;
      tr.appendChild(td);
    }
    return tr;
  });
  document.querySelector("#cmp tbody").replaceChildren(...rows);
}

function drawnAt(id, t) {
  const h = history.get(id);
  if (!h || h.length === 0 || t < h[0][0]) return null;
  const last = h[h.length - 1];
  if (t >= last[0]) return t - last[0] < 0.05 ? [last[1], last[2]] : null;
  let k = h.length - 1;
  while (h[k - 1][0] > t) k--;
  const [ta, xa, ya] = h[k - 1];
  const [tb, xb, yb] = h[k];
  const w = tb > ta ? (t - ta) / (tb - ta) : 1;
  return [xa + (xb - xa) * w, ya + (yb - ya) * w];
}

// -- render loop --------------------------------------------------------------------------------

function frame() {
  const t = stream.serverNow();
  drawn.clear();
  if (t !== null) {
    for (const id of reckoner.ids()) {
      const p = reckoner.positionAt(id, t);
      if (!p || !Number.isFinite(p[0]) || !Number.isFinite(p[1])) continue;
      drawn.set(id, [p[0], p[1]]);
      let h = history.get(id);
      if (!h) history.set(id, (h = []));
      h.push([t, p[0], p[1]]);
      while (h.length > 2 && h[0][0] < t - HISTORY_S) h.shift();
    }
  }
  for (const id of history.keys()) if (!drawn.has(id)) history.delete(id);
  if (camera.follow) {
    const target = fitTarget();
    if (target) {
      const a = 0.15; // ease toward the target
      camera.cx += (target.cx - camera.cx) * a;
      camera.cy += (target.cy - camera.cy) * a;
      camera.scale *= Math.exp(Math.log(target.scale / camera.scale) * a);
    }
  }
  draw();
  updatePanel();
  requestAnimationFrame(frame);
}

const colours = new Map(); // id -> colour, in order of first appearance
function colourOf(id) {
  let c = colours.get(id);
  if (c === undefined) {
    c = PALETTE[colours.size % PALETTE.length];
    colours.set(id, c);
  }
  return c;
}

function draw() {
  ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
  ctx.fillStyle = "#0e1217";
  ctx.fillRect(0, 0, width, height);
  drawGrid();
  const ids = [...reckoner.ids()].sort();

  // predicted paths, knots as small dots
  ctx.lineWidth = 2;
  ctx.lineJoin = "round";
  for (const id of ids) {
    const p = reckoner.path(id).points;
    const c = colourOf(id);
    ctx.strokeStyle = c;
    ctx.globalAlpha = 0.55;
    ctx.beginPath();
    for (let j = 0; j < p.length; j += 3) {
      if (j === 0) ctx.moveTo(sx(p[j]), sy(p[j + 1]));
      else ctx.lineTo(sx(p[j]), sy(p[j + 1]));
    }
    ctx.stroke();
    ctx.globalAlpha = 0.8;
    ctx.fillStyle = c;
    for (let j = 3; j < p.length; j += 3) dot(sx(p[j]), sy(p[j + 1]), 1.8);
    ctx.globalAlpha = 1;
  }

  // trails: where each avatar was drawn over the last 2 s
  ctx.lineWidth = 1.5;
  ctx.globalAlpha = 0.3;
  for (const id of ids) {
    const h = history.get(id);
    if (!h || h.length < 2) continue;
    ctx.strokeStyle = colourOf(id);
    ctx.beginPath();
    ctx.moveTo(sx(h[0][1]), sy(h[0][2]));
    for (let k = 1; k < h.length; k++) ctx.lineTo(sx(h[k][1]), sy(h[k][2]));
    ctx.stroke();
  }
  ctx.globalAlpha = 1;

  // last received samples: small hollow dots
  ctx.lineWidth = 1.5;
  for (const id of ids) {
    const a = stream.avatars.get(id);
    if (!a || !a.lastPos) continue;
    ctx.strokeStyle = colourOf(id);
    ring(sx(a.lastPos[0]), sy(a.lastPos[1]), 4);
  }

  // truth: white rings, a thin line to the drawn position
  if (truth.available) {
    for (const [id, p] of truth.avatars) {
      const x = sx(p[0]);
      const y = sy(p[1]);
      const d = drawn.get(id);
      if (d) {
        ctx.strokeStyle = "rgba(255, 255, 255, 0.7)";
        ctx.lineWidth = 1;
        ctx.beginPath();
        ctx.moveTo(x, y);
        ctx.lineTo(sx(d[0]), sy(d[1]));
        ctx.stroke();
      }
      ctx.strokeStyle = "#ffffff";
      ctx.lineWidth = 1.8;
      ring(x, y, 10);
    }
  }

  // drawn positions: filled dots with an outline, then labels on top
  for (const id of ids) {
    const d = drawn.get(id);
    if (!d) continue;
    ctx.fillStyle = colourOf(id);
    ctx.strokeStyle = "#0e1217";
    ctx.lineWidth = 2;
    ctx.beginPath();
    ctx.arc(sx(d[0]), sy(d[1]), 6.5, 0, 2 * Math.PI);
    ctx.fill();
    ctx.stroke();
  }
  ctx.font = NAME_FONT;
  ctx.textBaseline = "middle";
  ctx.lineJoin = "round";
  for (const id of ids) {
    const d = drawn.get(id);
    if (!d) continue;
    // put the label on the side away from where the avatar is heading (its path)
    const p = reckoner.path(id).points;
    const n = p.length - 3;
    const right = !(p[n] - p[0] > 0.05);
    const below = p[n + 1] - p[1] > 0.05;
    ctx.textAlign = right ? "left" : "right";
    const x = sx(d[0]) + (right ? 13 : -13);
    const y = sy(d[1]) + (below ? 15 : -13);
    ctx.lineWidth = 4;
    ctx.strokeStyle = "rgba(14, 18, 23, 0.9)";
    ctx.strokeText(id, x, y);
    ctx.fillStyle = colourOf(id);
    ctx.fillText(id, x, y);
    const label = expertLabel(id);
    if (label) {
      ctx.font = EXPERT_FONT;
      ctx.strokeText(label, x, y + 13);
      ctx.fillStyle = "rgba(220, 226, 232, 0.85)";
      ctx.fillText(label, x, y + 13);
      ctx.font = NAME_FONT;
    }
  }
}

function dot(x, y, r) {
  ctx.beginPath();
  ctx.arc(x, y, r, 0, 2 * Math.PI);
  ctx.fill();
}

function ring(x, y, r) {
  ctx.beginPath();
  ctx.arc(x, y, r, 0, 2 * Math.PI);
  ctx.stroke();
}

function drawGrid() {
  // a 1-2-5 step with lines at least ~70 px apart
  const raw = 70 / camera.scale;
  const mag = 10 ** Math.floor(Math.log10(raw));
  const step = [1, 2, 5, 10].map((k) => k * mag).find((s) => s >= raw);
  const decimals = Math.max(0, -Math.floor(Math.log10(step) + 1e-9));
  const fmt = (v) => `${(Math.abs(v) < step / 2 ? 0 : v).toFixed(decimals)} m`;
  const xa = Math.ceil(wx(0) / step) * step;
  const xb = wx(width);
  const ya = Math.ceil(wy(height) / step) * step;
  const yb = wy(0);

  ctx.lineWidth = 1;
  for (let x = xa; x <= xb; x += step) {
    const px = Math.round(sx(x)) + 0.5;
    ctx.strokeStyle = Math.abs(x) < step / 2 ? "#3b4a5c" : "#1b232d";
    ctx.beginPath();
    ctx.moveTo(px, 0);
    ctx.lineTo(px, height);
    ctx.stroke();
  }
  for (let y = ya; y <= yb; y += step) {
    const py = Math.round(sy(y)) + 0.5;
    ctx.strokeStyle = Math.abs(y) < step / 2 ? "#3b4a5c" : "#1b232d";
    ctx.beginPath();
    ctx.moveTo(0, py);
    ctx.lineTo(width, py);
    ctx.stroke();
  }
  ctx.font = "11px ui-monospace, 'DejaVu Sans Mono', Menlo, Consolas, monospace";
  ctx.fillStyle = "#6b7888";
  ctx.textAlign = "center";
  ctx.textBaseline = "bottom";
  for (let x = xa; x <= xb; x += step) {
    const px = sx(x);
    if (px > 40 && px < width - 24) ctx.fillText(fmt(x), px, height - 6);
  }
  ctx.textAlign = "left";
  ctx.textBaseline = "middle";
  for (let y = ya; y <= yb; y += step) {
    const py = sy(y);
    if (py > 16 && py < height - 24) ctx.fillText(fmt(y), 6, py - 8);
  }
}

let lastPanel = 0;
function updatePanel() {
  const now = performance.now();
  if (now - lastPanel < 200) return; // 5 Hz is plenty for text
  lastPanel = now;
  const s = stream.stats;
  ui.conn.textContent = stream.state + (stream.state === "reconnecting" && s.lastError ? ` (${s.lastError.code})` : "");
  ui.conn.className = stream.state;
  ui.model.textContent = stream.welcome ? String(stream.welcome.model) : "–";
  ui.model.title = ui.model.textContent;
  ui.count.textContent = stream.welcome ? String(stream.avatars.size) : "–";
  ui.tick.textContent = s.tickHz === null ? "–" : `${s.tickHz.toFixed(1)} Hz`;
  ui.bytes.textContent = s.frameBytes === null ? "–" : `${s.frameBytes.toLocaleString("en")} B`;
  ui.downlink.textContent =
    s.recordsPerS === null ? "–" : `${s.recordsPerS.toFixed(0)} rec/s, ${(s.bytesPerS / 1000).toFixed(1)} kB/s`;
  ui.rtt.textContent = s.rttMs === null ? "–" : `${s.rttMs.toFixed(1)} ms`;
  // stats.offset maps performance.now() to the server clock; show it against this browser's
  // wall clock instead (the server clock reads like Unix time), which is a readable number
  ui.offset.textContent = s.offset === null ? "–" : formatOffset(s.offset - performance.timeOrigin / 1000);
  ui.err.textContent = errors.mean === null ? "–" : `${errors.mean.toFixed(3)} m`;
  ui.err.title = errors.max === null ? "" : `mean over the last 2 s; max now ${errors.max.toFixed(3)} m`;
}

function formatOffset(o) {
  const sign = o < 0 ? "−" : "+";
  return Math.abs(o) >= 10 ? `${sign}${Math.abs(o).toFixed(3)} s` : `${sign}${Math.abs(o * 1000).toFixed(1)} ms`;
}

function parseRegion(s) {
  if (!s) return null;
  const v = s.split(",").map(Number);
  return v.length === 4 && v.every(Number.isFinite) ? v : null;
}

function clamp(v, lo, hi) {
  return Math.min(hi, Math.max(lo, v));
}

stream.connect();
pollTruth();
pollCompare();
pollExperts();
requestAnimationFrame(frame);

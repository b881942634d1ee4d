// avatarstream.js — a browser client for avatar-stream (wire protocol v1, docs/protocol.md).
//
// One ES module, no build step, no framework: import it from a three.js / A-Frame app.
//
//   import { AvatarStream, DeadReckoner } from "./avatarstream.js";
//   const stream = new AvatarStream("ws://localhost:8765/", { room: "lobby" });  // spectator
//   const reckoner = new DeadReckoner();
//   reckoner.attach(stream);              // feeds it every state frame, drops avatars that leave
//   stream.connect();
//   function frame() {                    // render loop
//     const t = stream.serverNow();       // "now" on the server clock
//     for (const id of reckoner.ids()) {
//       const p = reckoner.positionAt(id, t);   // [x, y, z] metres, z up
//       // move the avatar's mesh to p
//     }
//     requestAnimationFrame(frame);
//   }
//   requestAnimationFrame(frame);
//
// AvatarStream owns the socket: hello, reconnect with backoff, join/leave handle map,
// state decoding, ping/pong clock mapping, stats. DeadReckoner turns the predicted paths
// into a smooth position at any server time (the twin of client_demo/reckoning.py).
//
// MessagePack comes from the vendored @msgpack/msgpack (vendor/VERSION says which one;
// scripts/vendor_msgpack.sh refreshes it).

import { decode, encode } from "./vendor/msgpack.js";

export const PROTOCOL_VERSION = 2; // v2: records only when a path changed (downlink dead reckoning)

const PING_INTERVAL_S = 2.0; // ping -> pong every 2 s for the clock offset
const CLOCK_SAMPLES = 16; // keep the min-rtt sample of the last 16 pongs
const BACKOFF_MIN_S = 0.5; // reconnect delay: 0.5 s, doubling, at most 8 s
const BACKOFF_MAX_S = 8.0;
const RATE_WINDOW = 41; // state frames kept to measure the tick, record and byte rates
const RATE_SPAN_S = 5; // ... over at most this many seconds
const CLOSE_MOVED = 4001; // `moved`: the room is served by another worker (or this one drains)
const MAX_MOVES = 4;

const localNow = () => performance.now() / 1000;

/**
 * Decode the packed records of a `state` message (already msgpack-decoded) into paths.
 *
 * Record layout (little-endian, 20 + 2*nh*dims bytes): handle u16, age u16 ms, seq u32,
 * pos 3 x f32 metres, off i16 millimetres [nh][dims] (z offset 0 when dims == 2).
 *
 * Returns one object per record: {handle, age (s), seq, pos: [x, y, z], anchor, times, points}
 * where `anchor` = server_time - age, `times` (Float64Array, nh + 1) = anchor, anchor + horizons[k],
 * and `points` (Float64Array, 3 * (nh + 1)) = pos, pos + off[k] / 1000, flat x, y, z.
 */
export function decodeStateRecords(m, horizons) {
  const { n, nh, dims } = m;
  const rec = m.rec;
  if (!(rec instanceof Uint8Array)) throw new TypeError("state: rec is not a byte string");
  if (dims !== 2 && dims !== 3) throw new RangeError(`state: dims ${dims}`);
  if (nh !== horizons.length) throw new RangeError(`state: nh ${nh} != ${horizons.length} horizons`);
  const size = 20 + 2 * nh * dims;
  if (rec.byteLength < n * size) throw new RangeError(`state: rec holds ${rec.byteLength} bytes, not ${n} x ${size}`);
  const dv = new DataView(rec.buffer, rec.byteOffset, rec.byteLength);
  const out = new Array(n);
  for (let i = 0; i < n; i++) {
    const o = i * size;
    const handle = dv.getUint16(o, true);
    const age = dv.getUint16(o + 2, true) / 1000;
    const seq = dv.getUint32(o + 4, true);
    const x = dv.getFloat32(o + 8, true);
    const y = dv.getFloat32(o + 12, true);
    const z = dv.getFloat32(o + 16, true);
    const anchor = m.server_time - age;
    const times = new Float64Array(nh + 1);
    const points = new Float64Array(3 * (nh + 1));
    times[0] = anchor;
    points[0] = x;
    points[1] = y;
    points[2] = z;
    for (let k = 0; k < nh; k++) {
      const q = o + 20 + 2 * k * dims;
      const j = 3 * (k + 1);
      times[k + 1] = anchor + horizons[k];
      points[j] = x + dv.getInt16(q, true) / 1000;
      points[j + 1] = y + dv.getInt16(q + 2, true) / 1000;
      points[j + 2] = z + (dims === 3 ? dv.getInt16(q + 4, true) / 1000 : 0);
    }
    out[i] = { handle, age, seq, pos: [x, y, z], anchor, times, points };
  }
  return out;
}

/**
 * A connection to an avatar-stream server, as a player (`avatar`) or a spectator (no avatar).
 *
 * Events (CustomEvent, payload in `detail`):
 *   welcome  the welcome message ({horizons, tick_hz, model, server_time, handle, ...})
 *   join     {avatars: [id], handles: [h]}
 *   leave    {avatars: [id], handles: [h], reason?: "disconnected"}
 *   state    {tick, serverTime, records: [{id, handle, age, seq, pos, anchor, times, points}], bytes}
 *   error    {code, message} (a server `error`, a bad frame, or a socket error)
 *   close    {code, reason, reconnectIn (s) | null}
 *   open     the socket opened (hello sent)
 *
 * Properties: `state` ("idle" | "connecting" | "open" | "reconnecting" | "closed"),
 * `welcome`, `horizons`, `avatars` (Map id -> {id, handle, lastPos, seq, age, anchor, path,
 * receivedAt}), `stats` ({tickHz, frameBytes, rttMs, minRttMs, offset, frames, missed, reconnects,
 * records, bytes, recordsPerS, bytesPerS}): with v2 a tick may bring no frame (nothing changed),
 * so `missed` counts only v1 gaps, and the rates are over the last few seconds of frames.
 * `serverNow()` is now on the server clock (seconds).
 */
export class AvatarStream extends EventTarget {
  constructor(
    url,
    { room, avatar = null, region = null, WebSocket: Impl = globalThis.WebSocket, fetch: fetchImpl = globalThis.fetch, now = localNow } = {},
  ) {
    super();
    if (typeof room !== "string" || room.length === 0) throw new TypeError("AvatarStream: room is required");
    this.url = url;
    this.room = room;
    this.avatar = avatar;
    this.region = checkRegion(region);
    this._Impl = Impl;
    this._fetch = typeof fetchImpl === "function" ? fetchImpl.bind(globalThis) : null;
    this._now = now;
    this._movedTo = null; // a `moved` error's url: where the next connection goes
    this._routing = false; // a GET /route is in flight
    this._moves = 0; // `moved` followed in a row (a routing loop stops after MAX_MOVES)
    this.servedBy = null; // the worker URL of the current connection
    this.state = "idle";
    this.welcome = null;
    this.horizons = [];
    this.avatars = new Map(); // id -> avatar
    this.handles = new Map(); // handle -> id
    this.stats = {
      tickHz: null,
      frameBytes: null,
      rttMs: null,
      minRttMs: null,
      offset: null,
      frames: 0,
      missed: 0,
      reconnects: 0,
      lastError: null,
      records: 0, // avatar records received in state frames
      bytes: 0, // bytes of state frames received
      recordsPerS: null,
      bytesPerS: null,
    };
    this._ws = null;
    this._wanted = false;
    this._backoff = BACKOFF_MIN_S;
    this._reconnectTimer = null;
    this._pingTimer = null;
    this._clock = []; // [{rtt, offset}] of the last CLOCK_SAMPLES pongs
    this._coarse = []; // server_time - receive time of recent frames (before any pong)
    this._arrivals = [];
    this._lastTick = null;
  }

  /** Open the connection (and keep it open: reconnects with backoff until `close()`). */
  connect() {
    this._wanted = true;
    if (this._ws || this._reconnectTimer !== null || this._routing) return this;
    this._open();
    return this;
  }

  /** Leave (sends `bye`) and stop reconnecting. */
  close() {
    this._wanted = false;
    clearTimeout(this._reconnectTimer);
    this._reconnectTimer = null;
    this._stopPing();
    const ws = this._ws;
    if (ws && ws.readyState === 1) {
      try {
        ws.send(encode({ type: "bye" }));
      } catch {
        /* closing anyway */
      }
    }
    if (ws) ws.close(1000, "bye");
    this.state = "closed";
  }

  /** Spectators: watch the box [x0, y0, x1, y1] (metres, any two opposite corners), or null for the whole room. */
  setRegion(box) {
    this.region = checkRegion(box);
    if (this.state === "open") this._send({ type: "view", region: this.region });
  }

  /** Now on the server clock, seconds (local clock + the best offset estimate; null before the first frame). */
  serverNow() {
    return this.stats.offset === null ? null : this._now() + this.stats.offset;
  }

  /** The avatar id of a handle in view (undefined if none). */
  idOf(handle) {
    return this.handles.get(handle);
  }

  // -- socket -----------------------------------------------------------------------------

  _open() {
    this._reconnectTimer = null;
    this.state = this.stats.reconnects > 0 ? "reconnecting" : "connecting";
    const moved = this._movedTo;
    this._movedTo = null;
    if (moved) return this._connect(moved);
    if (this._fetch === null) return this._connect(this.url);
    // Ask the worker at `url` where the room is served (a cluster: any worker knows);
    // a server without /route, or one that does not answer, is used as it is.
    const u = new URL(this.url);
    const route = `${u.protocol === "wss:" ? "https:" : "http:"}//${u.host}/route?room=${encodeURIComponent(this.room)}`;
    this._routing = true;
    this._fetch(route)
      .then((r) => (r.ok ? r.json() : null))
      .then((j) => (j && typeof j.url === "string" ? j.url : this.url)) // null: this server
      .catch(() => this.url)
      .then((target) => {
        this._routing = false;
        if (this._wanted && this._ws === null) this._connect(target);
      });
  }

  _connect(url) {
    let ws;
    this.servedBy = url;
    try {
      ws = new this._Impl(url);
    } catch (e) {
      this._emit("error", { code: "connect_failed", message: String(e) });
      this._scheduleReconnect();
      return;
    }
    ws.binaryType = "arraybuffer";
    this._ws = ws;
    ws._opened = false;
    ws.onopen = () => {
      ws._opened = true;
      const hello = { type: "hello", v: PROTOCOL_VERSION, room: this.room };
      if (this.avatar !== null && this.avatar !== undefined) hello.avatar = this.avatar;
      if (this.region !== null) hello.region = this.region;
      this._send(hello);
      this._emit("open", {});
    };
    ws.onmessage = (ev) => this._onMessage(ev.data);
    ws.onerror = () => {}; // the close event follows and carries the code
    ws.onclose = (ev) => this._onClose(ws, ev.code, ev.reason);
  }

  _onClose(ws, code, reason) {
    if (ws !== this._ws) return;
    this._ws = null;
    if (!ws._opened && this.servedBy !== this.url && this._movedTo === null) {
      // the worker it was sent to is down (killed: its rooms are free once its entry
      // expires): the next hello goes to `url` itself, whose claim decides
      this._movedTo = this.url;
    }
    this._stopPing();
    this._dropAll();
    this.welcome = null;
    const again = this._wanted;
    if (again && code === CLOSE_MOVED && this._moves < MAX_MOVES) {
      this._moves += 1; // the room is elsewhere, or this worker drains: go now, no backoff
      this.stats.reconnects += 1;
      this._nextDelay = 0;
      this.state = "reconnecting";
      this._reconnectTimer = setTimeout(() => this._open(), 0);
    } else if (again) this._scheduleReconnect();
    else this.state = "closed";
    this._emit("close", { code, reason, reconnectIn: again ? this._nextDelay : null });
  }

  _scheduleReconnect() {
    this.state = "reconnecting";
    this._nextDelay = this._backoff;
    this._backoff = Math.min(this._backoff * 2, BACKOFF_MAX_S);
    this.stats.reconnects += 1;
    this._reconnectTimer = setTimeout(() => {
      if (this._wanted) this._open();
      else this._reconnectTimer = null;
    }, this._nextDelay * 1000);
  }

  _send(msg) {
    const ws = this._ws;
    if (ws && ws.readyState === 1) ws.send(encode(msg));
  }

  _emit(type, detail) {
    this.dispatchEvent(new CustomEvent(type, { detail }));
  }

  // -- messages ---------------------------------------------------------------------------

  _onMessage(data) {
    const tRecv = this._now();
    if (typeof data === "string") {
      this._emit("error", { code: "text_frame", message: "the server sent a text frame" });
      return;
    }
    let m;
    try {
      m = decode(new Uint8Array(data));
    } catch (e) {
      this._emit("error", { code: "bad_msgpack", message: String(e) });
      return;
    }
    if (m === null || typeof m !== "object" || typeof m.type !== "string") return;
    switch (m.type) {
      case "welcome":
        return this._onWelcome(m, tRecv);
      case "join":
        return this._onJoin(m);
      case "leave":
        return this._onLeave(m);
      case "state":
        return this._onState(m, tRecv, data.byteLength);
      case "pong":
        return this._onPong(m, tRecv);
      case "error":
        if (m.code === "moved") this._movedTo = typeof m.url === "string" ? m.url : null;
        this.stats.lastError = { code: m.code, message: m.message };
        return this._emit("error", { code: m.code, message: m.message });
      default:
        return; // unknown types are ignored (forward compatibility)
    }
  }

  _onWelcome(m, tRecv) {
    this.welcome = m;
    this.horizons = Array.from(m.horizons ?? []);
    this.state = "open";
    this._backoff = BACKOFF_MIN_S;
    this._moves = 0;
    this._arrivals = [];
    this._lastTick = null;
    this._coarse = [];
    this._clock = [];
    this._coarseSample(m.server_time, tRecv);
    this._emit("welcome", m);
    this._startPing();
  }

  _onJoin(m) {
    const avatars = [];
    const handles = [];
    for (let i = 0; i < m.handles.length; i++) {
      const id = m.avatars[i];
      const handle = m.handles[i];
      this.handles.set(handle, id);
      this.avatars.set(id, { id, handle, lastPos: null, seq: null, age: null, anchor: null, path: null, receivedAt: null });
      avatars.push(id);
      handles.push(handle);
    }
    this._emit("join", { avatars, handles });
  }

  _onLeave(m) {
    const avatars = [];
    const handles = [];
    for (let i = 0; i < m.handles.length; i++) {
      const handle = m.handles[i];
      const id = this.handles.get(handle) ?? m.avatars[i];
      this.handles.delete(handle);
      this.avatars.delete(id);
      avatars.push(id);
      handles.push(handle);
    }
    this._emit("leave", { avatars, handles });
  }

  _dropAll() {
    if (this.avatars.size === 0) return;
    const avatars = [...this.avatars.keys()];
    const handles = avatars.map((id) => this.avatars.get(id).handle);
    this.avatars.clear();
    this.handles.clear();
    this._emit("leave", { avatars, handles, reason: "disconnected" });
  }

  _onState(m, tRecv, bytes) {
    let records;
    try {
      records = decodeStateRecords(m, this.horizons);
    } catch (e) {
      this._emit("error", { code: "bad_state", message: String(e) });
      return;
    }
    const st = this.stats;
    st.frames += 1;
    st.frameBytes = bytes;
    st.records += records.length;
    st.bytes += bytes;
    const v1 = (this.welcome?.v ?? 1) < 2; // v2 skips ticks with nothing new on purpose
    if (v1 && this._lastTick !== null && m.tick > this._lastTick + 1) st.missed += m.tick - this._lastTick - 1;
    this._lastTick = m.tick;
    const arr = this._arrivals; // [tRecv, tick, records, bytes] of recent frames
    arr.push([tRecv, m.tick, records.length, bytes]);
    while (arr.length > RATE_WINDOW || (arr.length > 2 && tRecv - arr[0][0] > RATE_SPAN_S)) arr.shift();
    const span = tRecv - arr[0][0];
    if (arr.length >= 3 && span > 0) {
      let rec = 0;
      let b = 0;
      for (let i = 1; i < arr.length; i++) {
        rec += arr[i][2];
        b += arr[i][3];
      }
      st.tickHz = (m.tick - arr[0][1]) / span;
      st.recordsPerS = rec / span;
      st.bytesPerS = b / span;
    }
    this._coarseSample(m.server_time, tRecv);
    for (const r of records) {
      const id = this.handles.get(r.handle);
      if (id === undefined) continue; // a handle without join: ignore (the server never sends one)
      r.id = id;
      const a = this.avatars.get(id);
      a.lastPos = r.pos;
      a.seq = r.seq;
      a.age = r.age;
      a.anchor = r.anchor;
      a.path = r;
      a.receivedAt = tRecv;
    }
    this._emit("state", { tick: m.tick, serverTime: m.server_time, records: records.filter((r) => r.id !== undefined), bytes });
  }

  // -- clock ------------------------------------------------------------------------------

  _startPing() {
    this._stopPing();
    this._ping();
    this._pingTimer = setInterval(() => this._ping(), PING_INTERVAL_S * 1000);
  }

  _stopPing() {
    clearInterval(this._pingTimer);
    this._pingTimer = null;
  }

  _ping() {
    this._send({ type: "ping", t: this._now() });
  }

  _onPong(m, tRecv) {
    const tSend = m.t;
    if (typeof tSend !== "number" || typeof m.server_time !== "number" || tRecv < tSend) return;
    const rtt = tRecv - tSend;
    this._clock.push({ rtt, offset: m.server_time - (tSend + tRecv) / 2 });
    if (this._clock.length > CLOCK_SAMPLES) this._clock.shift();
    let best = this._clock[0];
    for (const s of this._clock) if (s.rtt < best.rtt) best = s;
    this.stats.offset = best.offset;
    this.stats.rttMs = rtt * 1000;
    this.stats.minRttMs = best.rtt * 1000;
  }

  // Before the first pong: offset ~ server_time - receive time (late by the one-way latency);
  // the largest of recent frames drops queueing delay.
  _coarseSample(serverTime, tRecv) {
    if (this._clock.length > 0 || typeof serverTime !== "number") return;
    this._coarse.push(serverTime - tRecv);
    if (this._coarse.length > CLOCK_SAMPLES) this._coarse.shift();
    this.stats.offset = Math.max(...this._coarse);
  }
}

function checkRegion(box) {
  if (box === null || box === undefined) return null;
  if (!Array.isArray(box) || box.length !== 4 || !box.every((v) => Number.isFinite(v) && Math.abs(v) <= 1e6)) {
    throw new RangeError("region: [x0, y0, x1, y1], finite numbers, |v| <= 1e6");
  }
  return box.slice();
}

const smoothstep = (s) => (s <= 0 ? 0 : s >= 1 ? 1 : s * s * (3 - 2 * s));

/** The position on a path {times, points} at server time t (no blending). */
export function pathAt(path, t, extrapolate = 0.5) {
  const T = path.times;
  const P = path.points;
  const last = T.length - 1;
  if (last === 0 || t <= T[0]) return [P[0], P[1], P[2]];
  if (t >= T[last]) {
    // continue the last segment's velocity for at most `extrapolate` seconds, then hold
    const j = 3 * last;
    const i = j - 3;
    const dt = T[last] - T[last - 1];
    const e = Math.min(t - T[last], extrapolate) / (dt > 0 ? dt : Infinity);
    return [P[j] + (P[j] - P[i]) * e, P[j + 1] + (P[j + 1] - P[i + 1]) * e, P[j + 2] + (P[j + 2] - P[i + 2]) * e];
  }
  let k = 0;
  while (T[k + 1] < t) k++; // T[k] <= t < T[k+1]; nh is small
  const dt = T[k + 1] - T[k];
  const w = dt > 0 ? (t - T[k]) / dt : 1;
  const i = 3 * k;
  const j = i + 3;
  return [P[i] + (P[j] - P[i]) * w, P[i + 1] + (P[j + 1] - P[i + 1]) * w, P[i + 2] + (P[j + 2] - P[i + 2]) * w];
}

/**
 * Dead reckoning along the server's predicted paths (JS twin of client_demo/reckoning.py).
 *
 * Per avatar it keeps the latest path: knots at anchor (= server_time - age) with `pos`
 * and at anchor + horizons[k] with pos + off[k]. `positionAt(id, t)`:
 *   - before the anchor: pos;
 *   - between knots: linear interpolation;
 *   - past the last horizon: the last segment's velocity for at most `extrapolate` s (0.5), then hold.
 * A new path (a new anchor) is blended in over `blend` s (0.1) from where the avatar was drawn:
 *   display(t) = new(t) + d * (1 - smoothstep((t - tArrive) / blend)),  d = oldDisplay(tArrive) - new(tArrive).
 * The same anchor again (within `sameAnchor`, 2 ms: age is rounded to 1 ms) or an older one
 * is a no-op, so feeding every state frame's records is right.
 */
export class DeadReckoner {
  constructor({ blend = 0.1, extrapolate = 0.5, sameAnchor = 0.002 } = {}) {
    this.blend = blend;
    this.extrapolate = extrapolate;
    this.sameAnchor = sameAnchor;
    this._paths = new Map(); // id -> {anchor, seq, times, points, d: [dx,dy,dz] | null, tArrive}
  }

  /**
   * Give avatar `id` a path {anchor?, seq?, times, points} that arrived at server time `tArrive`.
   * Returns true if it is a new path, false if its anchor is not newer than the current one.
   */
  update(id, path, tArrive) {
    const anchor = path.anchor ?? path.times[0];
    const seq = path.seq ?? null;
    const old = this._paths.get(id);
    if (old !== undefined && anchor <= old.anchor + this.sameAnchor) return false;
    const next = { anchor, seq, times: path.times, points: path.points, d: null, tArrive };
    if (old !== undefined && Number.isFinite(tArrive)) {
      const was = this._display(old, tArrive);
      const now = pathAt(next, tArrive, this.extrapolate);
      next.d = [was[0] - now[0], was[1] - now[1], was[2] - now[2]];
    }
    this._paths.set(id, next);
    return true;
  }

  /** Where to draw `id` at server time t: [x, y, z], or null for an unknown avatar. */
  positionAt(id, t) {
    const p = this._paths.get(id);
    return p === undefined ? null : this._display(p, t);
  }

  /** The current path of `id` ({anchor, seq, times, points}) or undefined. */
  path(id) {
    return this._paths.get(id);
  }

  has(id) {
    return this._paths.has(id);
  }

  ids() {
    return this._paths.keys();
  }

  get size() {
    return this._paths.size;
  }

  remove(id) {
    this._paths.delete(id);
  }

  clear() {
    this._paths.clear();
  }

  /**
   * Follow an AvatarStream: every `state` record updates its avatar (tArrive = the stream's
   * server time on arrival), `leave` removes, `welcome` (a new session) clears. Returns a detach function.
   */
  attach(stream) {
    const onState = (ev) => {
      const t = stream.serverNow() ?? ev.detail.serverTime;
      for (const r of ev.detail.records) this.update(r.id, r, t);
    };
    const onLeave = (ev) => {
      for (const id of ev.detail.avatars) this.remove(id);
    };
    const onWelcome = () => this.clear();
    stream.addEventListener("state", onState);
    stream.addEventListener("leave", onLeave);
    stream.addEventListener("welcome", onWelcome);
    return () => {
      stream.removeEventListener("state", onState);
      stream.removeEventListener("leave", onLeave);
      stream.removeEventListener("welcome", onWelcome);
    };
  }

  _display(p, t) {
    const q = pathAt(p, t, this.extrapolate);
    if (p.d !== null) {
      const w = 1 - smoothstep((t - p.tArrive) / this.blend);
      if (w > 0) {
        q[0] += p.d[0] * w;
        q[1] += p.d[1] * w;
        q[2] += p.d[2] * w;
      }
    }
    return q;
  }
}

// The load generator of bench/peers: N @colyseus/sdk clients in one room at 20 Hz.
//
//   node bots.js --url ws://127.0.0.1:PORT/ --room ROOM_ID --clients N
//                [--rate 20] [--ramp 2] [--duration 10] [--sample-every 25] [--procs 1]
//                [--server-pid PID]
//
// Clients join over --ramp seconds; each sends {seq, x, y} ("pos") at --rate Hz from
// its join until the end of the measured window, which starts 1 s after the ramp and
// lasts --duration seconds; then all leave and the figures are printed as one JSON
// object on stdout. Every client counts the state patches it receives; only every
// --sample-every-th one decodes them (the SDK's schema decoder), to measure e2e: the
// time from sending seq k to the first patch in which its own player's seq >= k.
// With --procs P > 1 the clients are split over P Node processes (copies of this
// script) that start together and whose figures are merged. Bounded in time: a process
// still running 60 s after its window ends exits by itself.
import { spawn } from "node:child_process";
import { readFileSync } from "node:fs";
import { Client, Protocol } from "@colyseus/sdk";

const opt = {};
for (let i = 2; i < process.argv.length; i += 2) opt[process.argv[i].slice(2)] = process.argv[i + 1];
const N = Number(opt.clients);
const rate = Number(opt.rate ?? 20);
const ramp = Number(opt.ramp ?? 2);
const duration = Number(opt.duration ?? 10);
const sampleEvery = Number(opt["sample-every"] ?? 25);
const procs = Math.min(Number(opt.procs ?? 1), N);
// wall-clock ms at which joining starts: the parent picks it, its children share it
const t0Wall = Number(opt.t0 ?? Date.now() + 1500);
const toLocal = (wall) => performance.now() + (wall - Date.now()); // ms, monotonic clock
const tStart = toLocal(t0Wall) + (ramp + 1) * 1000; // the measured window
const tEnd = tStart + duration * 1000;

// the server's CPU seconds so far (--server-pid, Linux), read around the measured window
const serverCpu = () => {
  try {
    const f = readFileSync(`/proc/${opt["server-pid"]}/stat`, "utf8").split(") ")[1].split(" ");
    return (Number(f[11]) + Number(f[12])) / 100; // clock ticks (USER_HZ)
  } catch {
    return NaN; // no --server-pid, or not there: null in the JSON
  }
};
const serverWindow = (async () => {
  if (opt.first !== undefined) return null; // a child: its parent reads it
  await new Promise((r) => setTimeout(r, tStart - performance.now()));
  const c0 = serverCpu();
  await new Promise((r) => setTimeout(r, tEnd - performance.now()));
  return (serverCpu() - c0) / duration;
})();

const quantiles = (xs) => {
  const s = Float64Array.from(xs).sort();
  const q = (p) => (s.length ? s[Math.min(s.length - 1, Math.ceil((p / 100) * s.length) - 1)] : null);
  return { p50: q(50), p95: q(95), p99: q(99), max: q(100) };
};

function summary(parts, serverCpuInWindow) {
  const sum = (k) => parts.reduce((a, p) => a + p[k], 0);
  const latencies = parts.flatMap((p) => p.latencies);
  const exact = parts.flatMap((p) => p.latencies_exact);
  const errors = parts.flatMap((p) => p.errors);
  const kinds = {};
  for (const e of errors) kinds[e] = (kinds[e] ?? 0) + 1;
  const expected = N * rate * duration; // one patch per client per 1/rate s
  return {
    clients: N,
    connected: sum("connected"),
    errors: errors.length,
    error_kinds: kinds,
    procs: parts.length,
    updates_expected: expected,
    updates_received: sum("patches"),
    updates_fraction: sum("patches") / expected,
    e2e_ms: quantiles(latencies),
    e2e_samples: latencies.length,
    e2e_exact_ms: quantiles(exact), // only patches carrying exactly seq k (the older are dropped)
    msgs_sent: sum("sent"),
    bytes_in_per_s: sum("bytes_in") / duration, // all clients, in the window
    generator_cpu_s_per_s: sum("cpu_s") / (ramp + 1 + duration),
    server_cpu_s_per_s: serverCpuInWindow,
  };
}

async function runBots(first, count) {
  const cpu0 = process.cpuUsage();
  const part = { connected: 0, errors: [], patches: 0, bytes_in: 0, sent: 0, latencies: [], latencies_exact: [] };
  const client = new Client(opt.url.replace(/^ws/, "http"));
  const bots = [];

  async function join(gi) {
    await new Promise((r) => setTimeout(r, toLocal(t0Wall + (ramp * 1000 * gi) / N) - performance.now()));
    const group = Math.floor(((gi * 0.6180339887) % 1) * 10); // spreads any every-k-th subset too
    const bot = { gi, group, room: null, seq: 0, sentAt: new Map(), arrival: 0, failed: false };
    bots.push(bot);
    const fail = (what) => {
      if (!bot.failed && bot.room !== null) part.errors.push(what);
      bot.failed = true;
    };
    let room;
    try {
      room = await client.joinById(opt.room);
    } catch (e) {
      part.errors.push(`join: ${e.code ?? e.message}`);
      return;
    }
    bot.room = room;
    part.connected += 1;
    room.onLeave((code) => fail(`left: ${code}`));
    room.onDrop((code) => fail(`dropped: ${code}`));
    room.onError((code) => fail(`error: ${code}`));
    const decode = gi % sampleEvery === 0;
    const events = room.connection.events;
    const sdkOnMessage = events.onmessage;
    events.onmessage = (ev) => {
      const now = performance.now();
      const bytes = new Uint8Array(ev.data);
      if (now >= tStart && now < tEnd) {
        part.bytes_in += bytes.length;
        if ((bytes[0] & 0x1f) === Protocol.ROOM_STATE_PATCH) part.patches += 1;
      }
      if (decode) {
        bot.arrival = now;
        sdkOnMessage(ev); // the others just count
      }
    };
    if (decode) {
      room.onStateChange((state) => {
        const me = state.players?.get(room.sessionId);
        if (me === undefined) return;
        for (const [k, t] of bot.sentAt) {
          if (k > me.seq) break; // in send order: the rest are newer
          if (t >= tStart && t < tEnd) {
            part.latencies.push(bot.arrival - t);
            if (k === me.seq) part.latencies_exact.push(bot.arrival - t);
          }
          bot.sentAt.delete(k);
        }
      });
    }
  }

  // one timer per phase group (10 per period) sends for its clients, as our load tool does
  const period = 1000 / rate;
  const groups = 10;
  const senders = Array.from({ length: groups }, (_, g) => (async () => {
    for (let k = 0; ; k++) {
      const due = toLocal(t0Wall) + (k + (g + 0.5) / groups) * period;
      if (due >= tEnd) return;
      await new Promise((r) => setTimeout(r, due - performance.now()));
      const now = performance.now();
      for (const bot of bots) {
        if (bot.group !== g || bot.room === null || bot.failed) continue;
        bot.seq += 1;
        const a = (now / 1000) * 0.5 + bot.gi; // walk a circle of 5 m around the bot's own spot
        bot.room.send("pos", { seq: bot.seq, x: (bot.gi % 50) * 10 + 5 * Math.cos(a), y: Math.floor(bot.gi / 50) * 10 + 5 * Math.sin(a) });
        if (bot.sentAt.size < 1000 && bot.gi % sampleEvery === 0) bot.sentAt.set(bot.seq, now);
        part.sent += 1;
      }
    }
  })());
  await Promise.all([...Array.from({ length: count }, (_, i) => join(first + i)), ...senders]);
  for (const bot of bots) bot.failed = true; // from here on a leave is ours
  await Promise.race([
    Promise.allSettled(bots.filter((b) => b.room).map((b) => b.room.leave())),
    new Promise((r) => setTimeout(r, 5000)),
  ]);
  const cpu = process.cpuUsage(cpu0);
  part.cpu_s = (cpu.user + cpu.system) / 1e6;
  return part;
}

setTimeout(() => {
  console.error("bots.js: still running 60 s after the window: giving up");
  process.exit(3);
}, tEnd - performance.now() + 60000).unref();

if (opt.first !== undefined) { // a child: its share of the clients, its part on stdout
  const part = await runBots(Number(opt.first), Number(opt.count));
  process.stdout.write(JSON.stringify(part) + "\n");
  process.exit(0);
} else if (procs <= 1) {
  const part = await runBots(0, N);
  process.stdout.write(JSON.stringify(summary([part], await serverWindow)) + "\n");
  process.exit(0);
} else {
  const share = Array.from({ length: procs }, (_, k) => Math.floor(N / procs) + (k < N % procs ? 1 : 0));
  const args = process.argv.slice(2).concat(["--t0", String(t0Wall)]);
  const parts = await Promise.all(share.map((count, k) => new Promise((resolve, reject) => {
    const first = share.slice(0, k).reduce((a, b) => a + b, 0);
    const child = spawn(process.execPath, [process.argv[1], ...args, "--first", String(first), "--count", String(count)], { stdio: ["ignore", "pipe", "inherit"] });
    let out = "";
    child.stdout.on("data", (d) => (out += d));
    child.on("exit", (code) => (code === 0 ? resolve(JSON.parse(out)) : reject(new Error(`bots.js child ${k} exited with ${code}`))));
  })));
  process.stdout.write(JSON.stringify(summary(parts, await serverWindow)) + "\n");
  process.exit(0);
}

"""The report of a load run: `build_report` turns the workers' figures, the missing workers
and the /metrics reads around the window into the figures (pure: a figure that cannot be
computed is None and "unmeasured" says why), `generator_verdict` says whether the generator
itself was saturated, `meets_service_level` whether the run held the capacity benchmark's
service level, and `print_summary` prints the report as a short table."""

from __future__ import annotations

import numpy as np

from client_demo.loadtest.scrape import Scrape, counter, histogram_quantiles, pid_list, series

SATURATED_CPU = 0.9  # CPU s/s of one worker in the window: about one core
SATURATED_LAG_MS = 20.0  # p99 of how late sends ran against their schedule
SATURATED_SKIPPED = 0.01  # fraction of the sends due in the window skipped (a period late)


def generator_verdict(
    cpu_s_per_s: list[float | None], lag_p99_ms: float | None, skipped: int, scheduled: int
) -> list[str]:
    """Why the generator was saturated in the window (empty: it was not): a worker at about
    one core, sends running late at p99, or >= 1 % of the sends skipped a whole period late.
    Late sends on a worker far from a core mean the machine starved it (other processes)."""
    out = []
    for k, c in enumerate(cpu_s_per_s):
        if c is not None and c >= SATURATED_CPU:
            out.append(f"worker {k} used {c:.2f} CPU s/s (>= {SATURATED_CPU:g}: about one core)")
    if lag_p99_ms is not None and lag_p99_ms >= SATURATED_LAG_MS:
        out.append(f"sends ran {lag_p99_ms:.0f} ms late at p99 (>= {SATURATED_LAG_MS:g} ms)")
    if skipped and skipped >= SATURATED_SKIPPED * scheduled:
        out.append(f"{skipped} of {scheduled} sends skipped, a whole period late")
    return out


def _quantiles_ms(values: np.ndarray, qs) -> dict:
    return {k: float(np.percentile(values, q)) if len(values) else None for k, q in qs}


def _decoding_clients(first: int, count: int, every: int) -> int:
    """How many of the clients first .. first+count-1 decode (index % every == 0)."""
    return -(-(first + count) // every) - -(-first // every)


def build_report(
    setup: dict, results: list[dict], missing: dict, m0: Scrape, m1: Scrape, after: Scrape
) -> dict:
    """The run's figures from the workers' `results`, the `missing` workers ({index:
    (first client, clients, pid, why)}) and the /metrics scrapes around the window (m0, m1)
    and after the run. Pure: every figure that cannot be computed is None and
    report["unmeasured"][key] says why."""
    unmeasured: dict[str, str] = {}
    duration, ramp, settle = setup["duration_s"], setup["ramp_s"], setup["settle_s"]
    every, protocol = setup["sample_every"], setup["protocol"]

    def tot(key: str) -> float:
        return sum(r[key] for r in results)

    def cat(key: str) -> np.ndarray:
        parts = [np.asarray(r[key], dtype=np.float64) for r in results]
        return np.concatenate(parts) if parts else np.zeros(0)

    no_worker = "no worker reported" if not results else None
    errors = [e for r in results for e in r["errors"]]
    close_codes: dict[str, int] = {}
    for r in results:
        for c in r["close_codes"]:
            close_codes[str(c)] = close_codes.get(str(c), 0) + 1
    connected = int(tot("connected"))
    expected = float(tot("expected"))
    received = int(tot("states_in_window"))
    frames_fraction = received / expected if expected > 0 else None
    if frames_fraction is None:
        unmeasured["frames_fraction"] = no_worker or "no client was connected in the window"

    # -- the server's side, from /metrics around the window
    ok = m0.text is not None and m1.text is not None
    metrics_why = None if ok else (m0.why or m1.why or "no /metrics read")
    interval = (m1.t - m0.t) if ok and m1.t > m0.t else None
    if ok and interval is None:
        ok, metrics_why = False, "the two /metrics reads were not apart in time"
    if ok and m0.took + m1.took > 0.25 * interval:
        ok, metrics_why = (
            False,
            (
                f"the /metrics reads around the window took {m0.took:.1f} s and {m1.took:.1f} s "
                "(the server answered late), so when it counted is uncertain by "
                f"{m0.took + m1.took:.1f} s of the {interval:.1f} s between them"
            ),
        )
    players = None
    if ok:  # were the reads answered while this run's clients were there?
        p0, p1 = (series(m.text, "avatar_connections", {"kind": "player"}) for m in (m0, m1))
        ours0 = tot("connected") - tot("connected_late")  # connected when the window began
        ours1 = sum(r.get("connected_at_end", r["connected"]) for r in results)
        if p0 is not None and p1 is not None:
            players = (p0 + p1) / 2
            if p0 < 0.5 * ours0 or p1 < 0.5 * ours1:
                ok, metrics_why = (
                    False,
                    (
                        f"the /metrics reads around the window were answered with {p0:.0f} and "
                        f"{p1:.0f} players connected, while {ours0:.0f} and {ours1:.0f} of this "
                        f"run's clients were (the reads took {m0.took:.1f} s and {m1.took:.1f} s: "
                        "the server answered them late), so they do not bracket the window"
                    ),
                )

    def delta(name: str, labels=None) -> float | None:
        return counter(m1.text, name, labels) - counter(m0.text, name, labels) if ok else None

    empty_q = {"p50": None, "p99": None}
    tick_ms = histogram_quantiles(m0.text, m1.text, "avatar_tick_seconds") if ok else empty_q
    step_ms = histogram_quantiles(m0.text, m1.text, "avatar_model_step_seconds") if ok else empty_q
    for key, q in (("tick_ms", tick_ms), ("model_step_ms", step_ms)):
        if q["p99"] is None:
            unmeasured[key] = metrics_why or "no tick (model step) ended in the window"
    overruns = delta("avatar_tick_overruns_total")
    end = after if after.text is not None else m1
    dropped = (
        counter(end.text, "avatar_frames_dropped_total")
        - counter(m0.text, "avatar_frames_dropped_total")
        if ok and end.text is not None
        else None
    )
    out_bytes = delta("avatar_bytes_out_total")
    server_bytes_out_per_s = out_bytes / interval if out_bytes is not None else None
    for key, v in (("overruns", overruns), ("dropped_frames", dropped),
                   ("server_bytes_out_per_s", server_bytes_out_per_s)):  # fmt: skip
        if v is None:
            unmeasured[key] = metrics_why
    if m0.cpu is not None and m1.cpu is not None and m1.t_sent > m0.t_sent:
        server_cpu = (m1.cpu - m0.cpu) / (m1.t_sent - m0.t_sent)
    else:
        server_cpu = None
        pids = setup.get("server_pids") or pid_list(setup.get("server_pid"))
        if pids:
            unmeasured["server_cpu_s_per_s"] = f"could not read /proc/PID/stat of every PID {pids}"
        else:
            unmeasured["server_cpu_s_per_s"] = setup.get("server_pids_why") or (
                "no --server-pid, and no process on this machine listens on the URL's port"
            )

    # -- updates: state frames expected less the ones the server skipped by design (v2)
    skipped_raw = delta("avatar_state_frames_skipped_total")
    updates_expected = updates_fraction = skipped_est = None
    if protocol == 1:
        skipped_est = 0.0  # the server skips frames for v2 clients only
    elif ok:
        if series(m1.text, "avatar_state_frames_skipped_total") is None:
            unmeasured["server_frames_skipped"] = (
                "the server exports no avatar_state_frames_skipped_total (taken as 0)"
            )
        share = min(1.0, connected / players) if players else 1.0
        skipped_est = skipped_raw * (duration / interval) * share
    else:
        unmeasured["updates_fraction"] = f"no skipped-frame count: {metrics_why}"
    if skipped_est is not None and no_worker is None:
        updates_expected = expected - skipped_est
        if updates_expected > 0:
            updates_fraction = received / updates_expected
        else:
            unmeasured["updates_fraction"] = "no frame was due in the window"
    elif no_worker:
        unmeasured["updates_fraction"] = no_worker

    # -- per client downlink, in the window
    cs = float(tot("client_seconds"))
    scs = float(tot("sampled_client_seconds"))
    sampled = int(tot("sampled_clients"))

    def per_cs(key: str, seconds: float) -> float | None:
        return float(tot(key)) / seconds if seconds > 0 else None

    version_records = delta("avatar_state_records_total", {"version": str(protocol)})
    downlink = {
        "bytes_per_s": per_cs("bytes_in_window", cs),
        "frames_per_s": per_cs("frames_in_window", cs),
        "state_frames_per_s": per_cs("states_in_window", cs),
        "records_per_s": per_cs("records_in_window", scs),
        "records_from": (
            f"the {sampled} decoding clients (every {every}-th client) over "
            f"{scs:.0f} client-seconds, averaged over them, not extrapolated"
        ),
        "server_records_per_s": (
            version_records / interval / players
            if version_records is not None and players
            else None
        ),
    }
    for key in ("bytes_per_s", "frames_per_s", "state_frames_per_s"):
        if downlink[key] is None:
            unmeasured[f"downlink_per_client.{key}"] = (
                no_worker or "no client was connected in the window"
            )
    if downlink["records_per_s"] is None:
        unmeasured["downlink_per_client.records_per_s"] = (
            no_worker or f"no decoding client (every {every}-th) was connected in the window"
        )
    if downlink["server_records_per_s"] is None:
        unmeasured["downlink_per_client.server_records_per_s"] = (
            metrics_why or "the server reported no connected player"
        )

    # -- end to end latency (decoding clients)
    lat = cat("latencies") * 1000.0
    e2e = _quantiles_ms(lat, (("p50", 50), ("p95", 95), ("p99", 99), ("max", 100)))
    if not len(lat):
        unmeasured["e2e_ms"] = no_worker or (
            f"no decoding client (every {every}-th) was connected in the window"
            if not sampled
            else "no decoding client's pos was answered in the window"
        )
    records, record_bytes = tot("records"), tot("record_bytes")
    state_bytes = record_bytes / records if records else None
    if state_bytes is None:
        unmeasured["state_bytes_per_avatar"] = no_worker or "no decoded state frame had a record"

    # -- the generator itself
    cpu_per = [
        r["window_cpu_s"] / r["window_wall_s"] if r["window_wall_s"] > 0 else None for r in results
    ]
    lags = cat("send_lags") * 1000.0
    send_lag = _quantiles_ms(lags, (("p50", 50), ("p99", 99), ("max", 100)))
    skipped_sends, scheduled = int(tot("sends_skipped")), int(tot("sends_scheduled"))
    saturated_why = generator_verdict(cpu_per, send_lag["p99"], skipped_sends, scheduled)
    if not results:
        unmeasured["generator"] = no_worker
    elif not len(lags):
        unmeasured["generator.send_lag_ms"] = "no send was due in the window"
    gen_cpu = tot("cpu_s") / (duration + ramp + settle) if results else None
    if gen_cpu is None:
        unmeasured["generator_cpu_s_per_s"] = no_worker

    missing_why = [
        f"worker {i} (pid {pid}, clients {first}..{first + n - 1}): {why or 'no report'}"
        for i, (first, n, pid, why) in sorted(missing.items())
    ]
    return {
        **{
            k: v
            for k, v in setup.items()
            if k not in ("sample_every", "server_pid", "server_pids_why")
        },
        "connected": connected,
        "connected_late": int(tot("connected_late")),
        "errors": len(errors),
        "error_kinds": {e: errors.count(e) for e in sorted(set(errors))},
        "close_codes": close_codes,
        "workers_missing": len(missing),
        "workers_missing_why": missing_why,
        "clients_unreported": sum(n for _, n, _, _ in missing.values()),
        "frames_expected": round(expected),
        "frames_received": received,
        "frames_fraction": frames_fraction,
        "server_frames_skipped": skipped_raw,
        "updates_expected": None if updates_expected is None else round(updates_expected),
        "updates_fraction": updates_fraction,
        "e2e_ms": e2e,
        "e2e_samples": len(lat),
        "e2e_clients": sampled,
        "e2e_clients_lost": sum(_decoding_clients(f, n, every) for f, n, _, _ in missing.values()),
        "tick_ms": tick_ms,
        "model_step_ms": step_ms,
        "overruns": overruns,
        "dropped_frames": dropped,
        "moves": int(sum(r.get("moves", 0) for r in results)),
        "metrics_window_s": interval,
        "metrics_read_s": [m0.took, m1.took],
        "state_bytes_per_avatar": state_bytes,
        "msgs_sent": int(tot("sent")),
        "bytes_out_per_s": tot("bytes_out") / (duration + ramp),
        "bytes_in_per_s": tot("bytes_in") / (duration + ramp),
        "server_bytes_out_per_s": server_bytes_out_per_s,
        "downlink_per_client": downlink,
        "generator": {
            "processes": setup["processes"],
            "cpu_s_per_s": cpu_per,
            "send_lag_ms": send_lag,
            "sends_skipped": skipped_sends,
            "sends_scheduled": scheduled,
            "saturated": bool(saturated_why) if results else None,
            "saturated_why": saturated_why,
        },
        "generator_cpu_s_per_s": gen_cpu,
        "server_cpu_s_per_s": server_cpu,
        "unmeasured": unmeasured,
    }


def meets_service_level(r: dict, e2e_p99_ms=100.0, tick_p99_ms=25.0, frames=0.95) -> bool:
    """The service level of the capacity benchmark: no errors, every worker reported, e2e
    p99, tick p99, and the fraction of state frames: "updates_fraction" when there is one
    (v2 frames the server skipped by design are not missing), else "frames_fraction" (a
    lower bound of it). A figure that could not be measured does not hold."""
    e2e, tick = r["e2e_ms"]["p99"], r["tick_ms"]["p99"]
    fraction = r.get("updates_fraction")
    if fraction is None:
        fraction = r.get("frames_fraction")
    return (
        r["errors"] == 0
        and not r.get("workers_missing")
        and e2e is not None
        and e2e <= e2e_p99_ms
        and tick is not None
        and tick <= tick_p99_ms
        and fraction is not None
        and fraction >= frames
    )


def print_summary(r: dict) -> None:
    e, t, d = r["e2e_ms"], r["tick_ms"], r.get("downlink_per_client", {})
    g = r.get("generator", {})

    def f(v, fmt=".1f", scale=1.0):
        return "-" if v is None else format(v * scale, fmt)

    def pct(v):
        return "-" if v is None else f"{100 * v:.1f} %"

    lag = g.get("send_lag_ms") or {}
    lines = [
        f"clients {r['clients']} (connected {r['connected']}, errors {r['errors']}"
        f"{', ' + str(r.get('connected_late')) + ' late' if r.get('connected_late') else ''}) "
        f"at {r['rate_hz']:g} Hz for {r['duration_s']:g} s, protocol v{r.get('protocol', 1)}, "
        f"{r['processes']} worker(s) ({r.get('processes_requested', '-')})",
        f"  frames   {r['frames_received']}/{r['frames_expected']} ({pct(r['frames_fraction'])}), "
        f"updates {r['frames_received']}/{f(r.get('updates_expected'), '.0f')} "
        f"({pct(r.get('updates_fraction'))}; server skipped "
        f"{f(r.get('server_frames_skipped'), '.0f')} by design), dropped by server "
        f"{f(r['dropped_frames'], '.0f')}",
        f"  e2e ms   p50 {f(e['p50'])}  p95 {f(e['p95'])}  p99 {f(e['p99'])}  max {f(e['max'])}"
        f"  ({r['e2e_samples']} samples from {r.get('e2e_clients', '-')} clients)",
        f"  tick ms  p50 {f(t['p50'])}  p99 {f(t['p99'])}  overruns {f(r['overruns'], '.0f')};"
        f"  model step p99 {f(r['model_step_ms']['p99'])} ms"
        + (
            f" (/metrics {r['metrics_window_s']:.1f} s apart)"
            if r.get("metrics_window_s") and abs(r["metrics_window_s"] - r["duration_s"]) > 0.5
            else ""
        ),
        f"  traffic  up {r['bytes_out_per_s'] / 1e3:.0f} kB/s, down "
        f"{r['bytes_in_per_s'] / 1e6:.2f} MB/s ({f(r['state_bytes_per_avatar'])} B per avatar "
        f"in a state frame)",
        f"  per client down: {f(d.get('bytes_per_s'), '.0f')} B/s, "
        f"{f(d.get('state_frames_per_s'))} state frames/s, {f(d.get('records_per_s'))} "
        f"records/s (decoding clients; server says {f(d.get('server_records_per_s'))})",
        f"  cpu s/s  generator {f(r['generator_cpu_s_per_s'], '.2f')} (per worker in the window: "
        f"{', '.join(f(c, '.2f') for c in g.get('cpu_s_per_s', [])) or '-'}), server "
        f"{f(r['server_cpu_s_per_s'], '.2f')}",
        f"  sends    late ms p50 {f(lag.get('p50'))}  p99 {f(lag.get('p99'))}  max "
        f"{f(lag.get('max'))}; skipped {g.get('sends_skipped', 0)}",
    ]
    if r.get("route") or len(r.get("workers") or []) > 1:
        rooms_at: dict[str, int] = {}
        for u in (r.get("room_urls") or {}).values():
            rooms_at[u] = rooms_at.get(u, 0) + 1
        lines.append(
            f"  cluster  {len(r.get('workers') or [])} server(s) for {r['rooms']} room(s) "
            f"(GET /route): "
            + ", ".join(f"{u} ({n} room{'s' * (n != 1)})" for u, n in rooms_at.items())
            + f"; moves followed {r.get('moves', 0)}; /metrics summed over them, server CPU "
            f"over PIDs {', '.join(map(str, r.get('server_pids') or [])) or '-'}"
        )
    if r.get("machine_listen_overflows") and r["connected"] < r["clients"]:
        lines.append(
            f"  connects {r['machine_listen_overflows']} dropped by full accept queues on this "
            "machine during the run (TcpExt ListenOverflows, every listener): SYNs are "
            "retried after 1, 3, 7 ... s; a longer --ramp eases the storm"
        )
    if g.get("saturated"):
        lines.append(
            "  GENERATOR SATURATED (it could not keep its schedule; latencies include it): "
            + "; ".join(g["saturated_why"])
        )
    if r.get("workers_missing"):
        lines.append(
            f"  MISSING  {r['workers_missing']} worker(s), {r['clients_unreported']} clients "
            f"in no figure: " + "; ".join(r["workers_missing_why"])
        )
    by_why: dict[str, list[str]] = {}
    for key, why in (r.get("unmeasured") or {}).items():
        by_why.setdefault(why, []).append(key)
    for why, keys in by_why.items():
        lines.append(f"  unmeasured {', '.join(keys)}: {why}")
    lines.append(
        f"  service level (e2e p99 <= 100 ms, tick p99 <= 25 ms, >= 95 % updates): "
        f"{'HELD' if meets_service_level(r) else 'BROKEN'}"
    )
    print("\n".join(lines), flush=True)

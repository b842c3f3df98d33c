"""Render a run's results as Markdown: the targets first, met or missed, then the details."""

from __future__ import annotations

import json
import sys
from typing import Any


def _f(value: Any, digits: int = 2, unit: str = "") -> str:
    if value is None or (isinstance(value, float) and value != value):
        return "–"
    if isinstance(value, float):
        return f"{value:.{digits}f}{unit}"
    return f"{value}{unit}"


def _verdict(ok: bool | None) -> str:
    return "–" if ok is None else ("**met**" if ok else "**missed**")


def _get(d: Any, *keys: str) -> Any:
    for k in keys:
        if not isinstance(d, dict) or k not in d:
            return None
        d = d[k]
    return d


def targets(r: dict[str, Any]) -> list[list[str]]:
    """Rows of (measurement, arm, value, target, verdict) against docs/performance.md."""
    rows: list[list[str]] = []
    chatd = [a for a in ("G", "Gb", "Ga", "Gpg") if a in r.get("arms", {})]
    lat = _get(r, "latency", "summary") or {}
    st = _get(r, "streaming", "summary") or {}
    tp = _get(r, "throughput", "summary") or {}
    op = r.get("open_streams") or {}
    store = r.get("store") or {}
    plan = r.get("plan") or {}
    apart = plan.get("stream_delay_ms", 20)
    firsts = plan.get("stream_n", 3) + plan.get("ttft_n", 0)
    conns = plan.get("tp_conns", 64)
    for g in chatd:
        s = lat.get(g, {})
        p50, p99 = s.get("p50_minus_D"), s.get("p99_minus_D")
        rows.append(
            [
                "1 added latency p50, 1 conn, 10-turn history, stored",
                f"{g}−D",
                _f(p50, 2, " ms"),
                "≤ 2.0 ms (stretch 1.0)",
                _verdict(None if p50 is None else p50 <= 2.0),
            ]
        )
        rows.append(
            [
                "1 added latency p99",
                f"{g}−D",
                _f(p99, 2, " ms"),
                "≤ 5 ms",
                _verdict(None if p99 is None else p99 <= 5.0),
            ]
        )
        for base in ("N",):
            if s.get(f"p50_minus_{base}") is not None:
                rows.append(
                    [
                        "1 added latency p50 / p99 over the floor",
                        f"{g}−{base}",
                        f"{_f(s.get('p50_minus_N'), 2)} / {_f(s.get('p99_minus_N'), 2)} ms",
                        "(no target: chatd's own share)",
                        "–",
                    ]
                )
        t = st.get(g, {})
        ttft = t.get("ttft_p50_minus_D")
        rows.append(
            [
                f"2 added time to first token p50 ({firsts} streams a run, {apart} ms apart)",
                f"{g}−D",
                _f(ttft, 2, " ms"),
                "≤ 2 ms",
                _verdict(None if ttft is None else ttft <= 2.0),
            ]
        )
        if t:
            rows.append(
                [
                    "2 added gap between chunks p50 / p99",
                    f"{g}−D",
                    f"{_f(t.get('gap_p50_minus_D'), 2)} / {_f(t.get('gap_p99_minus_D'), 2)} ms",
                    "(chunks passed on as they come)",
                    "–",
                ]
            )
            rows.append(
                [
                    "2 chunks one for one (received / expected, batched)",
                    g,
                    f"{t.get('chunks')}/{t.get('expected')}, {t.get('batched')} batched",
                    "all, none batched",
                    _verdict(t.get("one_for_one")),
                ]
            )
        ratio = _get(tp, g, "ratio_to_N")
        rows.append(
            [
                f"3 throughput at {conns} connections, instant upstream",
                f"{g}/N",
                _f(ratio, 2, "×") + f" ({_f(_get(tp, g, 'rps'), 0)} vs "
                f"{_f(_get(tp, 'N', 'rps'), 0)} req/s)",
                "≥ 0.5×",
                _verdict(None if ratio is None else ratio >= 0.5),
            ]
        )
        if _get(tp, g, "ratio_to_L") is not None:
            rows.append(
                [
                    "3 throughput against LiteLLM",
                    f"{g}/L",
                    _f(_get(tp, g, "ratio_to_L"), 2, "×"),
                    "(no target)",
                    "–",
                ]
            )
        o = op.get(g, {})
        if o:
            levels = o.get("levels", [])
            tried = levels[-1]["streams"] if levels else 0
            most = o.get("most_held")
            rows.append(
                [
                    "4 concurrent open streams at 10 chunks/s, no chunk lost",
                    g,
                    f"{most} held at rate; {o.get('most_complete')} with no chunk lost "
                    f"(tried up to {tried})",
                    "≥ 1,000",
                    _verdict(most is not None and most >= 1000),
                ]
            )
        idle = _get(r, "idle_rss", g, "rss_mb")
        rows.append(
            [
                "5 idle RSS per worker",
                g,
                _f(idle, 1, " MB"),
                "≤ 100 MB",
                _verdict(None if idle is None else idle <= 100),
            ]
        )
        per = o.get("rss_per_stream_kib") if o else None
        between = o.get("rss_per_stream_between") if o else None
        rows.append(
            [
                "5 RSS per extra open stream",
                g,
                _f(per, 1, " KiB")
                + (f" (from {between[0]} to {between[1]} streams)" if between else ""),
                "≤ 64 KiB",
                _verdict(None if per is None else per <= 64),
            ]
        )
        s10 = _get(store, g, "10", "store_ms")
        s1000 = _get(store, g, "1000", "store_ms")
        if s10 and s1000:
            ratio = s1000 / s10
            rows.append(
                [
                    "6 time to store a turn, 1,000 vs 10 messages",
                    g,
                    f"{ratio:.2f}× ({s1000:.2f} vs {s10:.2f} ms)",
                    "≤ 1.2×",
                    _verdict(ratio <= 1.2),
                ]
            )
    return rows


def baseline(r: dict[str, Any]) -> list[str]:
    """The section comparing G with Gb, chatd at the --baseline revision, in the same run."""
    b = r.get("baseline")
    if not b:
        return []
    lines = ["## Against the baseline (same run)", ""]
    if "sha" not in b:
        return [*lines, f"Baseline `{b.get('rev')}` could not be exported (see the notes).", ""]
    lines.append(
        f"Baseline `{b.get('rev')}` = `{b.get('sha')}` ({b.get('subject')}), imported from "
        f"`{b.get('chatd_imported_from')}`; G is the working tree "
        f"({_get(r, 'machine', 'commit')}). Differences and ratios are taken within each run, "
        "then the median."
    )
    lines.append("")
    if "G" not in (r.get("arms") or {}) or "Gb" not in (r.get("arms") or {}):
        return [*lines, "G and Gb did not both run (see the notes): nothing to compare.", ""]
    lat = _get(r, "latency", "summary") or {}
    st = _get(r, "streaming", "summary") or {}
    tp = _get(r, "throughput", "summary") or {}
    op = r.get("open_streams") or {}

    def pair(section: dict[str, Any], key: str, digits: int) -> list[str]:
        return [_f(_get(section, "G", key), digits), _f(_get(section, "Gb", key), digits)]

    def once(label: str, section: dict[str, Any], key: str, digits: int) -> list[str]:
        # Measured once per run (or once in all): the difference of the two figures.
        g, gb = _get(section, "G", key), _get(section, "Gb", key)
        d = g - gb if g is not None and gb is not None else None
        return [label, _f(g, digits), _f(gb, digits), _f(d, digits)]

    rows = [
        ["latency p50 ms", *pair(lat, "p50", 3), _f(_get(lat, "G", "p50_minus_Gb"), 3)],
        ["latency p99 ms", *pair(lat, "p99", 3), _f(_get(lat, "G", "p99_minus_Gb"), 3)],
        ["TTFT p50 ms", *pair(st, "ttft_p50", 2), _f(_get(st, "G", "ttft_p50_minus_Gb"), 2)],
        ["throughput req/s", *pair(tp, "rps", 0), _f(_get(tp, "G", "ratio_to_Gb"), 2, "×")],
        [
            "server CPU ms/req",
            *pair(tp, "server_cpu_ms_per_req", 2),
            _f(_get(tp, "G", "cpu_ratio_to_Gb"), 2, "×"),
        ],
        once("idle RSS MB", r.get("idle_rss") or {}, "rss_mb", 1),
    ]
    if op:
        rows.append(once("open streams held", op, "most_held", 0))
        rows.append(once("RSS KiB per extra open stream", op, "rss_per_stream_kib", 1))
    lines += _table(["figure", "G", f"Gb (`{b.get('sha')}`)", "G−Gb, or G/Gb"], rows)
    return [*lines, ""]


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(row) + " |" for row in rows]
    return out


def render(r: dict[str, Any]) -> str:
    """The whole report."""
    m = r.get("machine", {})
    lines = [
        "# chatd benchmark results",
        "",
        f"Machine: {m.get('nproc')} CPUs, {m.get('cpu')}; Python {m.get('python')}; "
        f"kernel {m.get('kernel')}; openai SDK {m.get('openai_sdk')}; uvicorn {m.get('uvicorn')}.",
        f"Commit {m.get('commit')}, {m.get('date')}. Pinned: {r.get('pinned')} (servers on "
        "core 0; load client and fake upstream on core 1). "
        f"Runs: {_get(r, 'plan', 'runs')}; wall time {r.get('wall_s')} s.",
        "",
        "Arms: "
        + "; ".join(f"**{n}** {a['title']}" for n, a in (r.get("arms") or {}).items())
        + ".",
        "",
    ]
    if r.get("quick"):
        lines += ["A --quick smoke run: every test, too small to compare with a full run.", ""]
    for note in r.get("notes", []):
        lines.append(f"- Note: {note}")
    if r.get("notes"):
        lines.append("")
    lines.append("## Against the targets")
    lines.append("")
    lines += _table(["measurement", "arm", "value (median of runs)", "target", ""], targets(r))
    lines.append("")
    lines += baseline(r)

    lat = _get(r, "latency", "summary")
    if lat:
        lines += ["## 1. Latency, one connection, not streamed (ms)", ""]
        rows = [
            [
                n,
                _f(s.get("p50"), 3),
                _f(s.get("p99"), 3),
                _f(s.get("p50_minus_D"), 3),
                _f(s.get("p99_minus_D"), 3),
                _f(s.get("p50_minus_N"), 3),
                _f(s.get("p99_minus_N"), 3),
                str(s.get("errors")),
            ]
            for n, s in lat.items()
        ]
        lines += _table(["arm", "p50", "p99", "p50−D", "p99−D", "p50−N", "p99−N", "errors"], rows)
        lines.append("")
    st = _get(r, "streaming", "summary")
    if st:
        lines += ["## 2. Streaming (ms)", ""]
        rows = [
            [
                n,
                _f(s.get("ttft_p50"), 2),
                _f(s.get("ttft_p50_minus_D"), 2),
                _f(s.get("gap_p50"), 2),
                _f(s.get("gap_p99"), 2),
                _f(s.get("gap_p50_minus_D"), 2),
                f"{s.get('chunks')}/{s.get('expected')}",
                str(s.get("batched")),
                str(s.get("failed")),
            ]
            for n, s in st.items()
        ]
        header = ["arm", "TTFT p50", "TTFT−D", "gap p50", "gap p99", "gap−D", "chunks"]
        lines += _table([*header, "batched", "failed"], rows)
        lines.append("")
    tp = _get(r, "throughput", "summary")
    if tp:
        conns = _get(r, "plan", "tp_conns")
        lines += [f"## 3. Throughput, {conns} connections, instant upstream", ""]
        rows = [
            [
                n,
                _f(s.get("rps"), 0),
                _f(s.get("ratio_to_N"), 2),
                _f(s.get("ratio_to_L"), 2),
                _f(s.get("p50_ms"), 1),
                _f(s.get("p99_ms"), 1),
                _f(s.get("server_cpu"), 2),
                _f(s.get("server_cpu_ms_per_req"), 2),
                _f(s.get("server_sys_share"), 2),
                _f(s.get("switches_per_req"), 1),
                _f(s.get("server_threads"), 0),
                _f(s.get("client_core_cpu"), 2),
                str(s.get("errors")),
            ]
            for n, s in tp.items()
        ]
        header = ["arm", "req/s", "÷N", "÷L", "p50 ms", "p99 ms", "server CPU"]
        header += ["CPU ms/req", "kernel share", "ctx switches/req", "threads"]
        lines += _table([*header, "client core CPU", "errors"], rows)
        lines.append("")
    op = r.get("open_streams")
    if op:
        lines += ["## 4–5. Concurrent open streams (10 chunks/s) and memory", ""]
        rows = []
        for n, o in op.items():
            for lv in o.get("levels", []):
                rows.append(
                    [
                        n,
                        str(lv["streams"]),
                        "yes" if lv["held"] else "no",
                        "yes" if lv.get("complete") else "no",
                        str(lv["peak_open"]),
                        str(lv["lost_chunks"]),
                        str(lv["failed"]),
                        _f(lv.get("window_s"), 1),
                        _f(lv.get("window_gap_mean_ms"), 0),
                        _f(lv.get("window_gap_p99_ms"), 0),
                        _f(lv.get("duration_stretch_p50"), 2),
                        _f(lv["rss_max_mb"], 1),
                    ]
                )
        header = ["arm", "streams", "held at rate", "all chunks", "peak open", "lost", "failed"]
        header += ["all-open window s", "gap mean ms", "gap p99 ms", "duration ÷ nominal"]
        lines += _table([*header, "RSS max MB"], rows)
        lines.append("")
        mem = [
            [
                n,
                _f(_get(r, "idle_rss", n, "rss_mb"), 1),
                _f(o.get("rest_rss_mb"), 1),
                _f(o.get("rss_per_stream_kib"), 1),
                "–"
                if not o.get("rss_per_stream_between")
                else "{} → {}".format(*o["rss_per_stream_between"]),
            ]
            for n, o in op.items()
            if n in (r.get("idle_rss") or {})
        ]
        fails = [
            f"- {n} at {lv['streams']}: {lv['first_failure']}"
            for n, o in op.items()
            for lv in o.get("levels", [])
            if lv.get("first_failure")
        ]
        if fails:
            lines += ["First failure per level that lost streams:", "", *fails, ""]
        if mem:
            header = ["arm", "idle RSS MB (start)", "at rest after restart MB"]
            lines += _table([*header, "KiB per extra open stream", "between streams"], mem)
            lines.append("")
    hist = _get(r, "history", "summary")
    store = r.get("store")
    if hist or store:
        lines += ["## 6. History growth", ""]
        if hist:
            rows = [
                [
                    k.replace("@", " @ ") + " messages",
                    _f(s.get("p50"), 3),
                    _f(s.get("D_p50"), 3),
                    _f(s.get("N_p50"), 3),
                    _f(s.get("minus_D"), 3),
                    _f(s.get("minus_N"), 3),
                    str(s.get("upstream_messages")),
                ]
                for k, s in hist.items()
            ]
            header = ["arm @ history", "p50 ms", "D p50 ms", "N p50 ms", "added −D ms"]
            lines += _table([*header, "added −N ms", "messages sent up"], rows)
            lines.append("")
        for n, s in (store or {}).items():
            if "error" in s:
                lines.append(f"store timing for {n} failed: {s['error']}")
                continue
            rows = [
                [
                    size,
                    _f(v.get("store_ms"), 3),
                    _f(v.get("session_ms"), 3),
                    _f(v.get("begin_ms"), 3),
                    _f(v.get("history_ms"), 3),
                    _f(v.get("finish_ms"), 3),
                    str(sum((v.get("statements") or {}).values())),
                    str(sum((v.get("thread_round_trips") or {}).values())),
                ]
                for size, v in s.items()
            ]
            lines.append(f"Store ({n}), median ms per turn, step by step as the engine calls it:")
            lines.append("")
            header = ["messages", "store (begin+finish)", "get_session", "begin_turn"]
            header += ["history read", "finish_turn", "SQL statements", "thread round trips"]
            lines += _table(header, rows)
            lines.append("")
    prof = r.get("profile")
    if isinstance(prof, dict) and not prof.get("skipped"):
        lines += ["## Profiles (py-spy)", ""]
        for key, s in prof.items():
            if "error" in s:
                lines.append(f"{key}: {s['error']}")
                continue
            load = s.get("load", {})
            if load.get("unit") == "chunk":
                lines.append(
                    f"**{key}**: {load.get('chunks')} chunks, server CPU "
                    f"{s.get('cpu_ms_per_req')} ms per chunk (the ms columns are per chunk)."
                )
            else:
                lines.append(
                    f"**{key}**: {load.get('rps')} req/s, server CPU {s.get('cpu_ms_per_req')} "
                    "ms per request."
                )
            lines.append("")
            rows = [
                [r_["name"], f"{r_['share']:.1%}", _f(r_.get("ms_per_req"), 3)]
                for r_ in s["by_library"][:10]
            ]
            lines += _table(["library (innermost frame)", "share", "ms/req"], rows)
            lines.append("")
            rows = [
                [
                    f"`{r_['name']}`",
                    f"{r_['share']:.1%}",
                    _f(r_.get("ms_per_req"), 3),
                    r_.get("libraries", ""),
                ]
                for r_ in s["by_chatd_function"][:12]
            ]
            lines += _table(["chatd function (with its callees)", "share", "ms/req", "in"], rows)
            lines.append("")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    with open(sys.argv[1]) as f:
        print(render(json.loads(f.read())))

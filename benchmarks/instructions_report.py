"""Render benchmarks.instructions' results as Markdown."""

from __future__ import annotations

from typing import Any

LONG, SHORT = 64, 8
KINDS = ("request", "stream", "chunk")


def _m(value: float | None, digits: int = 3) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def render(r: dict[str, Any]) -> str:
    """The results as Markdown."""
    s, p = r["summary"], r["plan"]
    base = r.get("baseline")
    lines = [
        "## Instructions per request (callgrind)",
        "",
        f"chatd `{r['commit']}`"
        + (f", Gb = `{base['sha']}` ({base['rev']})" if base else "")
        + f"; per window {p['requests']} non-streamed requests, {p['streams']} streams of {LONG}"
        f" and of {SHORT} chunks ({p['chunk_delay_ms']} ms apart); {p['reps']} repetitions,"
        " medians; spread = (max − min) / median; the idle rate is subtracted; servers'"
        f" PYTHONHASHSEED={p.get('hash_seed', 'random')}. Millions of"
        f" instructions (Minstr). {r['wall_s']:.0f} s.",
        "",
        "| arm | per request | spread | per stream of 64 chunks | spread | per chunk | spread "
        "| idle Minstr/s | start s |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, e in s.items():
        started = r["arms"][name]["started_in_s"]
        lines.append(
            f"| {name} | **{_m(e['request'])}** | {e['request_spread_pct']:.2f} % "
            f"| {_m(e['stream'])} | {e['stream_spread_pct']:.2f} % "
            f"| {_m(e['chunk'], 4)} | {e['chunk_spread_pct']:.2f} % "
            f"| {_m(e['idle_per_s'])} | {_m(started, 1)} |"
        )
    g = s.get("G", {})
    rows = [b for b in ("N", "Gb") if f"request_minus_{b}" in g]
    if rows:
        lines += [
            "",
            "| G against | per request | per stream of 64 | per chunk |",
            "|---|---|---|---|",
        ]
        for b in rows:
            d = [f"{g[f'{k}_minus_{b}']:+.3f} Minstr" for k in KINDS]
            x = [f"{g[f'{k}_ratio_to_{b}']:.3f}×" for k in KINDS]
            lines.append(f"| G−{b} | " + " | ".join(d) + " |")
            lines.append(f"| G/{b} | " + " | ".join(x) + " |")
    checks = [
        f"{n}: {a['counted_while_off']} instructions counted over the warm-up sent with "
        f"instrumentation off; {a['batched']} chunks arrived batched"
        for n, a in r["arms"].items()
    ]
    lines += ["", "Checks: " + "; ".join(checks) + "."]
    lines += breakdown(r.get("breakdown", {}))
    for note in r["notes"]:
        lines.append(f"\nNote: {note}")
    return "\n".join(lines) + "\n"


def breakdown(bd: dict[str, Any]) -> list[str]:
    """Tables of G's instructions per request by shared object and by function, beside N's."""
    if "G" not in bd:
        return []
    names = list(bd)
    diff = "N" in bd
    head = "| " + " | ".join(names) + (" | G−N |" if diff else " |")
    rule = "|---|" + "---|" * (len(names) + diff)

    def rows(key: str, top: int) -> list[str]:
        out = []
        for item, _ in sorted(bd["G"][key].items(), key=lambda kv: -kv[1])[:top]:
            values = [bd[n][key].get(item) for n in names]
            cells = [_m(v) for v in values]
            if diff:
                cells.append(f"{bd['G'][key][item] - (bd['N'][key].get(item) or 0):+.3f}")
            out.append(f"| `{item}` | " + " | ".join(cells) + " |")
        return out

    return [
        "",
        "Where a non-streamed request's instructions go (exclusive: each function's own, "
        "without what it calls; last repetition, idle not subtracted), Minstr per request, "
        "by shared object:",
        "",
        "| object " + head,
        rule,
        *rows("objects", 10),
        "",
        "and by function (G's top 15; functions outside a top 40 show as –):",
        "",
        "| function " + head,
        rule,
        *rows("functions", 15),
    ]

"""The benchmark's figures: per-round measurements -> medians and ranges, the targets, the plot.

Every ratio is taken round by round (a target against the floor measured in
the same round), then summarised as its median and its range over rounds.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

QUANTILES = (("p50", 0.5), ("p90", 0.9), ("p99", 0.99), ("p99.9", 0.999))
OPA_ENVOY_P99_MS = 3.0  # OPA-Envoy's published p99 at 1,000 req/s


def paired_rounds(
    sample: Callable[[bool], dict[str, list[float]]], base: str, other: str, rounds: int
) -> dict[str, Any]:
    """Two kinds of check measured alternating (`sample(cold)`: latencies by kind), warm (the
    memos on, as a server runs) and cold (cleared before each check): per round each kind's
    p50 in µs and `other / base`, then the ratios' median and range."""
    report: dict[str, Any] = {}
    for regime, cold in (("warm", False), ("cold", True)):
        per_round = []
        for _ in range(rounds):
            both = sample(cold)
            a, b = (statistics.median(both[kind]) * 1e6 for kind in (base, other))
            per_round.append({f"{base}_p50_us": a, f"{other}_p50_us": b, "ratio": b / a})
        ratios = [r["ratio"] for r in per_round]
        report[regime] = {
            "rounds": per_round,
            "ratio_median": statistics.median(ratios),
            "ratio_min": min(ratios),
            "ratio_max": max(ratios),
            **{
                f"{kind}_p50_us": statistics.median(r[f"{kind}_p50_us"] for r in per_round)
                for kind in (base, other)
            },
        }
    return report


def percentile(values: Sequence[float], q: float) -> float:
    """q in [0, 1] of latencies in seconds -> milliseconds."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000


def spread(values: Sequence[float]) -> dict[str, float]:
    if not values:
        return {"median": float("nan"), "min": float("nan"), "max": float("nan")}
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def _merged_counts(parts: list[dict[str, Any]]) -> tuple[dict[str, int], int]:
    statuses: dict[str, int] = {}
    for part in parts:
        for code, n in part["statuses"].items():
            statuses[str(code)] = statuses.get(str(code), 0) + n
    return statuses, sum(part["errors"] for part in parts)


def _open_summary(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    everything = [x for r in rounds for x in r["latencies"]]
    statuses, errors = _merged_counts(rounds)
    return {
        "n": len(everything),
        "merged_ms": {label: percentile(everything, q) for label, q in QUANTILES},
        "rounds_ms": {
            label: [percentile(r["latencies"], q) for r in rounds] for label, q in QUANTILES
        },
        "statuses": statuses,
        "errors": errors,
        "not_200": sum(n for code, n in statuses.items() if code != "200") + errors,
    }


def _target_summary(t: Any, rss: float) -> dict[str, Any]:
    statuses, errors = _merged_counts(t.closed)
    return {
        "label": t.spec.label,
        "rps": [c["rps"] for c in t.closed],
        "main_us": [c["main_us"] for c in t.closed],
        "other_us": [c["other_us"] for c in t.closed],
        "envoy_us": [c["envoy_us"] for c in t.closed],
        "statuses": statuses,
        "errors": errors,
        "rss_mb": round(rss, 1),
        "open": {rate: _open_summary(rounds) for rate, rounds in t.open.items()},
    }


def summarise(
    targets: list[Any],
    fsync: list[list[float]],
    depth: list[list[float]],
    rss: dict[str, float],
    rates: list[float],
    settings: dict[str, Any],
) -> dict[str, Any]:
    out: dict[str, Any] = {
        "settings": settings,
        "targets": {t.name: _target_summary(t, rss[t.name]) for t in targets},
        "fsync_ms": {
            "p50": [percentile(r, 0.5) for r in fsync],
            "p99": [percentile(r, 0.99) for r in fsync],
        },
        "chain_depth": {"p50_us": depth, "ratio": [r[-1] / r[0] for r in depth if r[0]]},
    }
    out["ratios"] = {
        name: {
            floor: [a / b for a, b in zip(t["rps"], out["targets"][floor]["rps"], strict=True)]
            for floor in ("floor", "floor-threads")
            if floor in out["targets"]
        }
        for name, t in out["targets"].items()
    }
    out["goals"] = goals(out)
    return out


# --- the targets -------------------------------------------------------------------------------


def _p99_minus_floor(results: dict[str, Any], name: str, rate: str) -> list[float]:
    ours = results["targets"].get(name, {}).get("open", {}).get(rate)
    floor = results["targets"].get("floor", {}).get("open", {}).get(rate)
    if ours is None or floor is None:
        return []
    return [a - b for a, b in zip(ours["rounds_ms"]["p99"], floor["rounds_ms"]["p99"], strict=True)]


def _p99(results: dict[str, Any], name: str, rate: str) -> list[float]:
    ours = results["targets"].get(name, {}).get("open", {}).get(rate)
    return [] if ours is None else list(ours["rounds_ms"]["p99"])


def goals(results: dict[str, Any]) -> list[dict[str, Any]]:
    """The issue's targets with what this run measured (ratios are per round, then median)."""
    ratios = results["ratios"]
    fsync_p99 = results["fsync_ms"]["p99"]
    default_p99 = _p99_minus_floor(results, "lasthop", "400")
    margins = [d - f for d, f in zip(default_p99, fsync_p99, strict=False)]
    rows = [
        _goal(
            "default (fsync always, receipts on): max req/s / floor >= 0.55",
            ratios.get("lasthop", {}).get("floor", []),
            lambda v: v >= 0.55,
            "{:.2f}",
        ),
        _goal(
            "default: p99 at 400 req/s - floor p99 - this disk's fsync p99 <= 0.5 ms",
            margins,
            lambda v: v <= 0.5,
            "{:+.2f} ms",
        ),
        _goal(
            'fsync "50ms", receipts on: max req/s / floor >= 0.80',
            ratios.get("lasthop-50ms", {}).get("floor", []),
            lambda v: v >= 0.80,
            "{:.2f}",
        ),
        _goal(
            'fsync "50ms": p99 at 400 req/s - floor p99 <= 0.5 ms',
            _p99_minus_floor(results, "lasthop-50ms", "400"),
            lambda v: v <= 0.5,
            "{:+.2f} ms",
        ),
        _goal(
            f'fsync "50ms": p99 at 1,000 req/s < {OPA_ENVOY_P99_MS} ms (OPA-Envoy, published)',
            _p99(results, "lasthop-50ms", "1000"),
            lambda v: v < OPA_ENVOY_P99_MS,
            "{:.2f} ms",
        ),
        _goal(
            "chain depth 4 / depth 1, uncached <= 1.3",
            results["chain_depth"]["ratio"],
            lambda v: v <= 1.3,
            "{:.2f}",
        ),
    ]
    return [row for row in rows if row["rounds"]]


def _goal(
    what: str, values: list[float], holds: Callable[[float], bool], fmt: str
) -> dict[str, Any]:
    s = spread(values)
    return {
        "goal": what,
        "rounds": values,
        "median": s["median"],
        "range": [s["min"], s["max"]],
        "text": f"{fmt.format(s['median'])} ({fmt.format(s['min'])} to {fmt.format(s['max'])})"
        if values
        else "",
        "met": bool(values) and holds(s["median"]),
        "every_round": bool(values) and all(holds(v) for v in values),
    }


# --- the report --------------------------------------------------------------------------------


def _range(values: Sequence[float], fmt: str = "{:.0f}") -> str:
    if not values:
        return "-"
    s = spread(values)
    return f"{fmt.format(s['median'])} ({fmt.format(s['min'])}-{fmt.format(s['max'])})"


def render(results: dict[str, Any]) -> str:
    st = results["settings"]
    lines = [
        "# Lasthop benchmark",
        "",
        f"{st['machine']['cpus']} CPUs, Python {st['machine']['python']}, load average "
        f"{', '.join(f'{x:.1f}' for x in st['machine']['load_average'])} at the start; "
        f"{st['rounds']} rounds, targets interleaved; closed loop {st['seconds']:g} s with "
        f"{st['connections']} connections, open loop {st['open_seconds']:g} s per rate. "
        f"Figures: median (range over rounds). Took {st.get('minutes', '?')} minutes.",
        "",
        "## Targets",
        "",
        "| target | measured | met (median) | every round |",
        "| --- | ---: | --- | --- |",
    ]
    for goal in results["goals"]:
        met = "yes" if goal["met"] else "**no**"
        every = "yes" if goal["every_round"] else "no"
        lines.append(f"| {goal['goal']} | {goal['text']} | {met} | {every} |")
    lines += _throughput(results) + _latency(results) + _other(results)
    return "\n".join(lines) + "\n"


def _throughput(results: dict[str, Any]) -> list[str]:
    lines = [
        "",
        "## Maximum throughput and CPU per check",
        "",
        "| target | req/s | / floor | / honest floor | main thread | other threads | Envoy | RSS |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name, t in results["targets"].items():
        ratios = results["ratios"][name]
        lines.append(
            f"| {name} | {_range(t['rps'])} | {_range(ratios.get('floor', []), '{:.2f}')} | "
            f"{_range(ratios.get('floor-threads', []), '{:.2f}')} | {_range(t['main_us'])} µs | "
            f"{_range(t['other_us'])} µs | {_range(t['envoy_us'])} µs | {t['rss_mb']:.0f} MB |"
        )
    return lines


def _latency(results: dict[str, Any]) -> list[str]:
    lines = [
        "",
        "## Latency at offered load (through Envoy; ms, from the schedule)",
        "",
        "| target | req/s | p50 | p99 | p99.9 | p99 by round | not 200 |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for rate in results["settings"]["rates"]:
        for name, t in results["targets"].items():
            o = t["open"].get(str(int(rate)))
            if o is None:
                continue
            m = o["merged_ms"]
            lines.append(
                f"| {name} | {int(rate)} | {m['p50']:.2f} | {m['p99']:.2f} | {m['p99.9']:.2f} "
                f"| {_range(o['rounds_ms']['p99'], '{:.2f}')} | {o['not_200']} |"
            )
    return lines


def _other(results: dict[str, Any]) -> list[str]:
    fsync = results["fsync_ms"]
    depth = results["chain_depth"]
    lines = ["", "## The disk and the chain", ""]
    if fsync["p99"]:
        lines.append(
            f"fsync of a record-sized append under the audit trail: p50 "
            f"{_range(fsync['p50'], '{:.2f}')} ms, p99 {_range(fsync['p99'], '{:.2f}')} ms."
        )
    if depth["p50_us"]:
        per_depth = list(zip(*depth["p50_us"], strict=True))
        points = ", ".join(f"{d + 1}: {_range(list(v))} µs" for d, v in enumerate(per_depth))
        lines.append(
            f"Chain depth, p50 of one uncached check in process (Redis registry, no local "
            f"cache): {points}; depth 4 / depth 1 {_range(depth['ratio'], '{:.2f}')}."
        )
    return lines


def plot(results: dict[str, Any], path: Path) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    rates = results["settings"]["rates"]
    fig, ax = plt.subplots(figsize=(8, 5))
    shown = [(name, t) for name, t in results["targets"].items() if t["open"]]
    for index, (name, t) in enumerate(shown):  # a colour per target, a line style per quantile
        for q, style in (("p50", "-"), ("p99", "--"), ("p99.9", ":")):
            values = [t["open"][str(int(r))]["merged_ms"][q] for r in rates]
            ax.plot(rates, values, style, color=f"C{index}", marker="o", label=f"{name} {q}")
    ax.axhline(OPA_ENVOY_P99_MS, color="grey", linewidth=0.8)
    ax.set_xlabel("offered load (req/s)")
    ax.set_ylabel("latency through Envoy (ms)")
    ax.set_yscale("log")
    ax.set_title("Latency against offered load")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True

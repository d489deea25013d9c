"""wasmtop's Grafana dashboards as code (grafana-foundation-sdk).

    .venv/bin/python grafana/generate.py          # rewrite grafana/dashboards/*.json
    .venv/bin/python grafana/generate.py --check  # exit 1 with a diff when they are out of date

Every query reads only series the daemon exports (docs/metrics.md). Every dashboard has a
Prometheus data source variable and a ``node`` variable: in a cluster the scrape adds a ``node``
target label (the ServiceMonitor relabels the node name into it); on a single host without it,
"All" (``.*``) matches the series that have no ``node`` label.
"""

from __future__ import annotations

import argparse
import difflib
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import yaml
from grafana_foundation_sdk.builders import bargauge, heatmap, stat, table, timeseries
from grafana_foundation_sdk.builders.common import (
    GraphThresholdsStyleConfig,
    ReduceDataOptions,
    VizLegendOptions,
    VizTooltipOptions,
)
from grafana_foundation_sdk.builders.dashboard import (
    Dashboard,
    DashboardLink,
    DatasourceVariable,
    QueryVariable,
    Row,
    ThresholdsConfig,
)
from grafana_foundation_sdk.builders.heatmap import CellValues, HeatmapColorOptions, YAxisConfig
from grafana_foundation_sdk.builders.prometheus import Dataquery
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models.common import (
    BigValueColorMode,
    BigValueGraphMode,
    BigValueTextMode,
    GraphTresholdsStyleMode,
    LegendDisplayMode,
    LegendPlacement,
    SortOrder,
    TooltipDisplayMode,
)
from grafana_foundation_sdk.models.dashboard import (
    DashboardCursorSync,
    DashboardLinkType,
    DataSourceRef,
    DataTransformerConfig,
    Threshold,
    ThresholdsMode,
    ValueMap,
    ValueMappingResult,
    VariableOption,
    VariableRefresh,
    VariableSort,
)
from grafana_foundation_sdk.models.heatmap import HeatmapColorMode, HeatmapColorScale
from grafana_foundation_sdk.models.prometheus import PromQueryFormat

HERE = Path(__file__).resolve().parent
OUT = HERE / "dashboards"
DS = DataSourceRef(type_val="prometheus", uid="${datasource}")
TAG = "wasmtop"
# The shipped rules' thresholds (in their quantities' units), drawn as dashed lines.
THRESHOLDS = {
    r["name"]: r["threshold"]
    for r in yaml.safe_load((HERE.parent / "alerts/rules/default.yaml").read_text())["rules"]
}
COLD_START_S = THRESHOLDS["WasmtopColdStartSlow"] / 1e3  # ms
RSS_GROWTH_BPS = THRESHOLDS["WasmtopMemoryGrowth"] * 1e6 / 60  # MB per minute
REQUEST_P99_S = THRESHOLDS["WasmtopRequestLatencyP99"] / 1e3
REQUEST_P999_S = THRESHOLDS["WasmtopRequestLatencyP999"] / 1e3
PREEMPT_DELAY_S = THRESHOLDS["WasmtopPreemptionDelay"] / 1e3
WAKEUP_P99_S = THRESHOLDS["WasmtopWakeupDelayP99"] / 1e3

NODE = 'node=~"$node"'
RI = "[$__rate_interval]"


@dataclass(frozen=True)
class Q:
    """One PromQL target: a range query unless ``instant``; ``fmt`` a Grafana result format."""

    expr: str
    legend: str = ""
    instant: bool = False
    fmt: Optional[PromQueryFormat] = None


# -- variables ------------------------------------------------------------------------------
ALL = VariableOption(selected=True, text=["All"], value=["$__all"])


def _datasource_var() -> DatasourceVariable:
    return DatasourceVariable("datasource").label("Data source").type("prometheus")


def _query_var(name: str, label: str, query: str, description: str) -> QueryVariable:
    """A multi-value variable whose "All" is the regex ``.*`` (it also matches series without
    the label, e.g. workloads that are not pods, or a host scraped without ``node``)."""
    return (
        QueryVariable(name)
        .label(label)
        .description(description)
        .datasource(DS)
        .query(query)
        .refresh(VariableRefresh.ON_TIME_RANGE_CHANGED)
        .sort(VariableSort.ALPHABETICAL_ASC)
        .multi(True)
        .include_all(True)
        .all_value(".*")
        .current(ALL)
    )


def node_var() -> QueryVariable:
    return _query_var(
        "node",
        "Node",
        "label_values(wasmtop_probe_up, node)",
        "The scrape's node target label (the ServiceMonitor relabels the node name into it).",
    )


def workload_vars(*, runtime: bool = False) -> list[Any]:
    """namespace, pod (and runtime), workload: each narrowed by the ones before it."""
    out: list[Any] = []
    sel = NODE
    out.append(
        _query_var(
            "namespace",
            "Namespace",
            f"label_values(wasmtop_cpu_seconds_total{{{sel}}}, namespace)",
            "Kubernetes namespace of the workload's pod (none for plain processes).",
        )
    )
    sel += ', namespace=~"$namespace"'
    out.append(
        _query_var(
            "pod",
            "Pod",
            f"label_values(wasmtop_cpu_seconds_total{{{sel}}}, pod)",
            "The workload's pod (none for plain processes).",
        )
    )
    sel += ', pod=~"$pod"'
    metric = "wasmtop_cpu_seconds_total"
    if runtime:
        metric = "wasmtop_rss_bytes"
        out.append(
            _query_var(
                "runtime",
                "Runtime",
                f'label_values(wasmtop_rss_bytes{{{sel}, runtime!=""}}, runtime)',
                "WebAssembly runtime the workload embeds (wasmtime, wasmedge, ...).",
            )
        )
        sel += ', runtime=~"$runtime", runtime!=""'
    out.append(
        _query_var(
            "workload",
            "Workload",
            f"label_values({metric}{{{sel}}}, workload)",
            "wasmtop's workload key: pod:NS/NAME/CONTAINER, pid:N, ... (or other: the "
            "workloads past metrics.max_workloads, added up).",
        )
    )
    return out


WORKLOAD = 'node=~"$node", namespace=~"$namespace", pod=~"$pod", workload=~"$workload"'
WASM = (
    'node=~"$node", namespace=~"$namespace", pod=~"$pod", runtime=~"$runtime", runtime!="", '
    'workload=~"$workload"'
)
BY_WORKLOAD = "node, workload"


# -- panels ---------------------------------------------------------------------------------
def quantiles(histogram: str, qs: tuple[str, ...], by: str, legend: str) -> tuple[Q, ...]:
    """One query per quantile of a histogram over the selected workloads, legend "pNN ..."."""
    return tuple(
        Q(
            f"histogram_quantile({q}, sum by (le, {by}) "
            f"(rate({histogram}_bucket{{{WORKLOAD}}}{RI})))",
            f"p{float(q) * 100:g} {legend}",
        )
        for q in qs
    )


# The histograms whose buckets carry trace ids as exemplars (exporters/series.py).
EXEMPLAR_HISTOGRAMS = (
    "wasmtop_request_duration_seconds",
    "wasmtop_preempt_delay_seconds",
    "wasmtop_wakeup_delay_seconds",
)


def _targets(panel: Any, queries: tuple[Q, ...]) -> Any:
    for i, q in enumerate(queries):
        target = Dataquery().expr(q.expr).ref_id(chr(ord("A") + i)).datasource(DS)
        if q.legend:
            target = target.legend_format(q.legend)
        target = target.instant() if q.instant else target.range()
        # Latency over time (a quantile, a heatmap), not a ratio of bucket counts: exemplars
        # are seconds and would be drawn on the ratio's axis.
        latency = 'le="' not in q.expr
        if not q.instant and latency and any(f"{h}_bucket" in q.expr for h in EXEMPLAR_HISTOGRAMS):
            target = target.exemplar(True)  # the trace behind a latency point (docs/otlp.md)
        if q.fmt is not None:
            target = target.format(q.fmt)
        panel = panel.with_target(target)
    return panel


def _thresholds(*steps: tuple[Optional[float], str]) -> ThresholdsConfig:
    return (
        ThresholdsConfig()
        .mode(ThresholdsMode.ABSOLUTE)
        .steps([Threshold(value=v, color=c) for v, c in steps])
    )


def ts(
    title: str,
    unit: str,
    *queries: Q,
    description: str,
    w: int = 12,
    h: int = 8,
    max_: Optional[float] = None,
    line_at: Optional[float] = None,
) -> timeseries.Panel:
    """A time series; ``line_at`` draws a dashed red threshold line (an alerting default)."""
    p = (
        timeseries.Panel()
        .title(title)
        .description(description)
        .unit(unit)
        .min(0)
        .span(w)
        .height(h)
        .fill_opacity(10)
        .legend(
            VizLegendOptions()
            .show_legend(True)
            .display_mode(LegendDisplayMode.TABLE)
            .placement(LegendPlacement.BOTTOM)
            .calcs(["mean", "max", "lastNotNull"])
        )
        .tooltip(VizTooltipOptions().mode(TooltipDisplayMode.MULTI).sort(SortOrder.DESCENDING))
    )
    if max_ is not None:
        p = p.max(max_)
    if line_at is not None:
        p = p.thresholds(_thresholds((None, "green"), (line_at, "red"))).thresholds_style(
            GraphThresholdsStyleConfig().mode(GraphTresholdsStyleMode.DASHED)
        )
    return _targets(p, queries)


def heat(title: str, query: Q, *, description: str, w: int = 12, h: int = 8) -> heatmap.Panel:
    """A heatmap of a Prometheus histogram's buckets (not recalculated by Grafana)."""
    p = (
        heatmap.Panel()
        .title(title)
        .description(description)
        .span(w)
        .height(h)
        .calculate(False)
        .y_axis(YAxisConfig().unit("s"))
        .cell_values(CellValues().unit("cps"))
        .color(
            HeatmapColorOptions()
            .mode(HeatmapColorMode.SCHEME)
            .scheme("Oranges")
            .scale(HeatmapColorScale.EXPONENTIAL)
            .exponent(0.5)
            .steps(64)
            .fill("dark-orange")
            .reverse(False)
        )
        .show_legend()
        .show_tooltip()
        .show_y_histogram()
    )
    return _targets(p, (query,))


def single(
    title: str,
    unit: str,
    *queries: Q,
    description: str,
    w: int = 6,
    h: int = 5,
    steps: tuple[tuple[Optional[float], str], ...] = ((None, "green"),),
    mappings: Optional[dict[str, tuple[str, str]]] = None,
) -> stat.Panel:
    """A stat of the latest value of each series (instant queries)."""
    p = (
        stat.Panel()
        .title(title)
        .description(description)
        .unit(unit)
        .span(w)
        .height(h)
        .thresholds(_thresholds(*steps))
        .color_mode(BigValueColorMode.BACKGROUND)
        .graph_mode(BigValueGraphMode.NONE)
        .text_mode(BigValueTextMode.VALUE_AND_NAME)
        .reduce_options(ReduceDataOptions().calcs(["lastNotNull"]).values(False))
    )
    if mappings:
        p = p.mappings(
            [
                ValueMap(
                    options={
                        v: ValueMappingResult(text=text, color=color, index=i)
                        for i, (v, (text, color)) in enumerate(mappings.items())
                    }
                )
            ]
        )
    return _targets(p, queries)


def bars(title: str, unit: str, *queries: Q, description: str, w: int = 12, h: int = 8) -> Any:
    """Horizontal bars of the latest value of each series (instant queries)."""
    p = (
        bargauge.Panel()
        .title(title)
        .description(description)
        .unit(unit)
        .min(0)
        .span(w)
        .height(h)
        .thresholds(_thresholds((None, "green")))
        .reduce_options(ReduceDataOptions().calcs(["lastNotNull"]).values(False))
    )
    return _targets(p, queries)


def tab(
    title: str,
    unit: str,
    *queries: Q,
    description: str,
    w: int = 24,
    h: int = 8,
    mappings: Optional[dict[str, tuple[str, str]]] = None,
) -> table.Panel:
    """A table of instant results, one row per series, labels as columns (Time hidden)."""
    p = (
        table.Panel()
        .title(title)
        .description(description)
        .unit(unit)
        .span(w)
        .height(h)
        .show_header(True)
        .with_transformation(
            DataTransformerConfig(
                id_val="organize", options={"excludeByName": {"Time": True}, "renameByName": {}}
            )
        )
    )
    if mappings:
        p = p.mappings(
            [
                ValueMap(
                    options={
                        v: ValueMappingResult(text=text, color=color, index=i)
                        for i, (v, (text, color)) in enumerate(mappings.items())
                    }
                )
            ]
        )
    return _targets(p, queries)


# -- dashboards -----------------------------------------------------------------------------
class Board:
    """A dashboard being built: panel ids in order of addition, rows as flat separators."""

    def __init__(self, uid: str, title: str, description: str, variables: list[Any] = ()) -> None:
        self.uid = uid
        self.next_id = 0
        self.builder = (
            Dashboard(title)
            .uid(uid)
            .description(description)
            .tags([TAG])
            .editable()
            .time("now-1h", "now")
            .refresh("30s")
            .timezone("browser")
            .tooltip(DashboardCursorSync.CROSSHAIR)
            .link(
                DashboardLink("wasmtop")
                .type(DashboardLinkType.DASHBOARDS)
                .tags([TAG])
                .as_dropdown(True)
                .include_vars(True)
                .keep_time(True)
                .target_blank(False)
                .icon("external link")
                .tooltip("")
                .url("")
            )
            .with_variable(_datasource_var())
            .with_variable(node_var())
        )
        for v in variables:
            self.builder = self.builder.with_variable(v)

    def _id(self) -> int:
        self.next_id += 1
        return self.next_id

    def row(self, title: str) -> Board:
        self.builder = self.builder.with_row(Row(title).id(self._id()))
        return self

    def add(self, *panels: Any) -> Board:
        for p in panels:
            self.builder = self.builder.with_panel(p.id(self._id()).datasource(DS))
        return self

    def json(self) -> str:
        return JSONEncoder(sort_keys=True, indent=2).encode(self.builder.build()) + "\n"


def node_overview() -> Board:
    b = Board(
        "wasmtop-node-overview",
        "wasmtop / Node overview",
        "Scheduler interference, socket bypass and probe health of the nodes wasmtop runs on.",
    )
    b.row("Scheduler")
    b.add(
        ts(
            "CPU migrations / s (top 10 workloads)",
            "cps",
            Q(
                f"topk(10, sum by ({BY_WORKLOAD}) (rate(wasmtop_migrations_total{{{NODE}}}{RI})))",
                "{{workload}} {{node}}",
            ),
            description="Moves of the workload's threads from one CPU to another.",
        ),
        ts(
            "Preemptions / s (top 10 workloads)",
            "cps",
            Q(
                f"topk(10, sum by ({BY_WORKLOAD}) "
                f"(rate(wasmtop_involuntary_switches_total{{{NODE}}}{RI})))",
                "{{workload}} {{node}}",
            ),
            description="Involuntary context switches: switched out while still runnable.",
        ),
        heat(
            "Preemption delay (all workloads)",
            Q(
                f"sum by (le) (rate(wasmtop_preempt_delay_seconds_bucket{{{NODE}}}{RI}))",
                "{{le}}",
                fmt=PromQueryFormat.HEATMAP,
            ),
            description="Preemptions per second by delay bucket: from an involuntary switch "
            "until the thread ran again (wasmtop_preempt_delay_seconds).",
        ),
        ts(
            "Preemption delay P99 (top 10 workloads)",
            "s",
            Q(
                "topk(10, histogram_quantile(0.99, sum by (le, node, workload) "
                f"(rate(wasmtop_preempt_delay_seconds_bucket{{{NODE}}}{RI}))))",
                "{{workload}} {{node}}",
            ),
            description="From the histogram buckets, so within a bucket's width. The "
            "dashed line is the alerting default (50 ms).",
            line_at=PREEMPT_DELAY_S,
        ),
        heat(
            "Wake-up delay (all workloads)",
            Q(
                f"sum by (le) (rate(wasmtop_wakeup_delay_seconds_bucket{{{NODE}}}{RI}))",
                "{{le}}",
                fmt=PromQueryFormat.HEATMAP,
            ),
            description="Wake-ups per second by delay bucket: from a thread's wake-up "
            "(sched_wakeup, sched_wakeup_new) until it ran, time it spent runnable behind "
            "other tasks on its CPU (wasmtop_wakeup_delay_seconds).",
        ),
        ts(
            "Wake-up delay P99 (top 10 workloads)",
            "s",
            Q(
                "topk(10, histogram_quantile(0.99, sum by (le, node, workload) "
                f"(rate(wasmtop_wakeup_delay_seconds_bucket{{{NODE}}}{RI}))))",
                "{{workload}} {{node}}",
            ),
            description="From the histogram buckets, so within a bucket's width. The "
            "dashed line is the alerting default (10 ms, the edge services' P99 budget).",
            line_at=WAKEUP_P99_S,
        ),
        ts(
            "Run-queue delay per second (top 10 workloads)",
            "percentunit",
            Q(
                f"topk(10, sum by ({BY_WORKLOAD}) "
                f"(rate(wasmtop_runq_delay_seconds_total{{{NODE}}}{RI})))",
                "{{workload}} {{node}}",
            ),
            description="Time the workload's threads were runnable but not running (wake-up "
            "plus preemption delay) per second, summed over its threads (100% = one thread "
            "waiting all the time).",
            w=8,
        ),
        ts(
            "Preemptions over the threshold / s",
            "cps",
            Q(
                f"sum by ({BY_WORKLOAD}) "
                f"(rate(wasmtop_preemptions_over_threshold_total{{{NODE}}}{RI})) > 0",
                "{{workload}} {{node}}",
            ),
            description="Preemptions longer than probes.sched.threshold_ms: the ones the "
            "kernel reports one by one.",
            w=8,
        ),
        ts(
            "CPU time by workload (top 10)",
            "percentunit",
            Q(
                f"topk(10, sum by ({BY_WORKLOAD}) (rate(wasmtop_cpu_seconds_total{{{NODE}}}{RI})))",
                "{{workload}} {{node}}",
            ),
            description="CPU time of the workload's threads (100% = one CPU).",
            w=8,
        ),
    )
    b.row("Socket bypass")
    bypass = f"sum by (node) (rate(wasmtop_bypass_bytes_total{{{NODE}}}{RI}))"
    stack = f"sum by (node) (rate(wasmtop_stack_bytes_total{{{NODE}}}{RI}))"
    b.add(
        ts(
            "Socket bypass share of bytes sent",
            "percentunit",
            Q(f"{bypass} / ({bypass} + {stack})", "{{node}}"),
            description="Bytes that went socket to socket through the sockmap, of all "
            "the local TCP payload the workloads sent.",
            max_=1,
        ),
        ts(
            "Bytes sent: bypass and network stack",
            "Bps",
            Q(bypass, "bypass {{node}}"),
            Q(stack, "stack {{node}}"),
            description="wasmtop_bypass_bytes_total and wasmtop_stack_bytes_total.",
        ),
    )
    b.row("Probe health and lost events")
    b.add(
        single(
            "Probes attached",
            "none",
            Q(f"min by (node, probe) (wasmtop_probe_up{{{NODE}}})", "{{probe}} {{node}}", True),
            description="1 when the probe is attached, 0 otherwise (unavailable or failed).",
            w=12,
            steps=((None, "red"), (1, "green")),
            mappings={"0": ("down", "red"), "1": ("up", "green")},
        ),
        single(
            "Events lost in the time range",
            "short",
            Q(
                f"sum by (node, probe) "
                f"(increase(wasmtop_probe_events_lost_total{{{NODE}}}[$__range]))",
                "{{probe}} {{node}}",
                True,
            ),
            description="Failed ring-buffer reservations plus records dropped in userspace. "
            "Any loss means the figures undercount: observability must not lie.",
            w=12,
            steps=((None, "green"), (1, "red")),
        ),
        ts(
            "Lost and malformed events / s",
            "cps",
            Q(
                f"sum by (node, probe) (rate(wasmtop_probe_events_lost_total{{{NODE}}}{RI}))",
                "lost {{probe}} {{node}}",
            ),
            Q(
                f"sum by (node, probe) (rate(wasmtop_probe_events_malformed_total{{{NODE}}}{RI}))",
                "malformed {{probe}} {{node}}",
            ),
            description="Lost: the ring buffer was full or userspace dropped the record. "
            "Malformed: a record that did not decode.",
        ),
        ts(
            "Ring-buffer events / s",
            "cps",
            Q(
                f"sum by (node, probe) (rate(wasmtop_probe_events_total{{{NODE}}}{RI}))",
                "{{probe}} {{node}}",
            ),
            description="Records received and decoded from each probe's ring buffer.",
        ),
        ts(
            "Probe kernel time",
            "percentunit",
            Q(
                f"sum by (node, probe) (rate(wasmtop_probe_run_seconds_total{{{NODE}}}{RI}))",
                "{{probe}} {{node}}",
            ),
            description="CPU time spent in each probe's BPF programs (100% = one CPU; needs "
            "kernel.bpf_stats_enabled, else 0).",
        ),
        ts(
            "Workloads with series",
            "short",
            Q(f"sum by (node, state) (wasmtop_exporter_workloads{{{NODE}}})", "{{state}} {{node}}"),
            Q(f"max by (node) (wasmtop_exporter_max_workloads{{{NODE}}})", "limit {{node}}"),
            description="named: workloads with series of their own; other: folded into "
            'workload="other" past metrics.max_workloads (their gauges are not exported).',
        ),
    )
    b.row("Daemon")
    b.add(
        ts(
            "Snapshot window",
            "s",
            Q(f"max by (node) (wasmtop_window_seconds{{{NODE}}})", "{{node}}"),
            description="Length of the last Snapshot's window (collector.tick_s; longer "
            "when the collector falls behind).",
            w=8,
        ),
        ts(
            "Snapshots / s",
            "cps",
            Q(f"sum by (node) (rate(wasmtop_snapshots_total{{{NODE}}}{RI}))", "{{node}}"),
            description="Collector ticks.",
            w=8,
        ),
        single(
            "Last config reload",
            "none",
            Q(
                f"min by (node) (wasmtop_config_last_reload_successful{{{NODE}}})",
                "{{node}}",
                True,
            ),
            description="0 when the last SIGHUP reload was refused (the daemon keeps its "
            "previous config).",
            w=8,
            h=8,
            steps=((None, "red"), (1, "green")),
            mappings={"0": ("refused", "red"), "1": ("ok", "green")},
        ),
    )
    return b


def workload_drilldown() -> Board:
    b = Board(
        "wasmtop-workload",
        "wasmtop / Workload",
        "One workload (or several) on its nodes: CPU, scheduling, memory, network, requests.",
        workload_vars(),
    )
    by = "node, workload"
    legend = "{{workload}} {{node}}"
    b.row("CPU and scheduling")
    b.add(
        ts(
            "CPU time",
            "percentunit",
            Q(f"sum by ({by}) (rate(wasmtop_cpu_seconds_total{{{WORKLOAD}}}{RI}))", legend),
            description="CPU time of the workload's threads from the scheduler probe (100% = "
            "one CPU).",
            w=8,
        ),
        ts(
            "Context switches / s",
            "cps",
            Q(
                f"sum by ({by}) (rate(wasmtop_context_switches_total{{{WORKLOAD}}}{RI}))",
                "all " + legend,
            ),
            Q(
                f"sum by ({by}) (rate(wasmtop_involuntary_switches_total{{{WORKLOAD}}}{RI}))",
                "involuntary " + legend,
            ),
            description="All context switches and the involuntary ones (preemptions).",
            w=8,
        ),
        ts(
            "CPU migrations / s",
            "cps",
            Q(f"sum by ({by}) (rate(wasmtop_migrations_total{{{WORKLOAD}}}{RI}))", legend),
            description="Moves of the workload's threads between CPUs.",
            w=8,
        ),
        heat(
            "Preemption delay",
            Q(
                f"sum by (le) (rate(wasmtop_preempt_delay_seconds_bucket{{{WORKLOAD}}}{RI}))",
                "{{le}}",
                fmt=PromQueryFormat.HEATMAP,
            ),
            description="Preemptions per second by delay bucket, the selected workloads together.",
        ),
        ts(
            "Preemption delay P50 / P99",
            "s",
            *quantiles("wasmtop_preempt_delay_seconds", ("0.5", "0.99"), by, legend),
            description="From the histogram buckets (10 µs ... 1 s). Dashed: the alerting "
            "default, 50 ms.",
            line_at=PREEMPT_DELAY_S,
        ),
        heat(
            "Wake-up delay",
            Q(
                f"sum by (le) (rate(wasmtop_wakeup_delay_seconds_bucket{{{WORKLOAD}}}{RI}))",
                "{{le}}",
                fmt=PromQueryFormat.HEATMAP,
            ),
            description="Wake-ups per second by delay bucket (woken until running), the "
            "selected workloads together.",
        ),
        ts(
            "Wake-up delay P50 / P99",
            "s",
            *quantiles("wasmtop_wakeup_delay_seconds", ("0.5", "0.99"), by, legend),
            description="From the histogram buckets (10 µs ... 1 s). Dashed: the alerting "
            "default for the P99, 10 ms.",
            line_at=WAKEUP_P99_S,
        ),
        ts(
            "Run-queue delay per second",
            "percentunit",
            Q(f"sum by ({by}) (rate(wasmtop_runq_delay_seconds_total{{{WORKLOAD}}}{RI}))", legend),
            description="Time the workload's threads were runnable but not running (wake-up "
            "plus preemption delay) per second, summed over its threads (100% = one thread "
            "waiting all the time).",
        ),
        ts(
            "Waited behind (top 10 culprits)",
            "percentunit",
            Q(
                f"topk(10, sum by ({by}, culprit) "
                f"(rate(wasmtop_waited_behind_seconds_total{{{WORKLOAD}}}{RI})))",
                "{{culprit}} ahead of " + legend,
            ),
            description="The workload's run-queue delay per second, split by who held the CPU "
            "meanwhile: culprit is that workload's key, idle (the CPU was idle: the wake-up "
            "path itself), other (culprits beyond the top ones of a Snapshot) or unattributed "
            "(older than the CPU's switch history).",
        ),
        ts(
            "Affinity stability",
            "percentunit",
            Q(f"max by ({by}) (wasmtop_affinity_stability_ratio{{{WORKLOAD}}})", legend),
            description="Migrations per context switch in the last window (0 = never moved).",
            w=8,
        ),
        ts(
            "CPU skew",
            "percentunit",
            Q(f"max by ({by}) (wasmtop_cpu_skew_ratio{{{WORKLOAD}}})", legend),
            description="Entropy of the CPU time over the allowed CPUs / an even spread's "
            "(100% = even, 0 = all on one CPU).",
            w=8,
            max_=1,
        ),
        ts(
            "CPU throttled by the cgroup quota",
            "percentunit",
            Q(
                f"sum by ({by}) (rate(wasmtop_cpu_throttled_seconds_total{{{WORKLOAD}}}{RI}))",
                legend,
            ),
            description="Time the workload's cgroup was throttled per second of wall time.",
            w=8,
        ),
    )
    b.row("Memory")
    b.add(
        ts(
            "Resident memory",
            "bytes",
            Q(f"max by ({by}) (wasmtop_rss_bytes{{{WORKLOAD}}})", "rss " + legend),
            Q(f"max by ({by}) (wasmtop_memory_current_bytes{{{WORKLOAD}}})", "cgroup " + legend),
            Q(f"max by ({by}) (wasmtop_memory_limit_bytes{{{WORKLOAD}}})", "limit " + legend),
            description="RSS summed over the workload's processes; the cgroup's memory use "
            "and limit where it has one.",
        ),
        ts(
            "RSS growth",
            "Bps",
            Q(f"max by ({by}) (wasmtop_rss_growth_bytes_per_second{{{WORKLOAD}}})", legend),
            description="Least-squares slope of RSS over collector.growth_window_s. Dashed: "
            "the alerting default, 2 MB per minute.",
            line_at=RSS_GROWTH_BPS,
        ),
    )
    b.row("Network and requests")
    bypass = f"sum by ({by}) (rate(wasmtop_bypass_bytes_total{{{WORKLOAD}}}{RI}))"
    stack = f"sum by ({by}) (rate(wasmtop_stack_bytes_total{{{WORKLOAD}}}{RI}))"
    b.add(
        ts(
            "Bytes sent: bypass and network stack",
            "Bps",
            Q(bypass, "bypass " + legend),
            Q(stack, "stack " + legend),
            description="Local TCP payload through the sockmap bypass and through the stack.",
            w=8,
        ),
        ts(
            "Socket bypass share",
            "percentunit",
            Q(f"{bypass} / ({bypass} + {stack})", legend),
            description="Share of the bytes sent that took the socket bypass.",
            w=8,
            max_=1,
        ),
        ts(
            "Requests / s",
            "reqps",
            Q(
                f"sum by ({by}) (rate(wasmtop_request_duration_seconds_count{{{WORKLOAD}}}{RI}))",
                legend,
            ),
            description="Server-side HTTP requests that ended (traced workloads only).",
            w=8,
        ),
    )
    b.row("Alerts")
    b.add(
        tab(
            "Alerts of the workload",
            "none",
            Q(
                "max by (node, alertname, severity, workload, namespace, pod) "
                f"(wasmtop_alert_firing{{{WORKLOAD}}})",
                instant=True,
                fmt=PromQueryFormat.TABLE,
            ),
            description="Evaluated on the node: firing or pending (resolved ones have no series).",
            h=6,
            mappings={"0": ("pending", "orange"), "1": ("firing", "red")},
        ),
    )
    return b


def requests_latency() -> Board:
    b = Board(
        "wasmtop-requests",
        "wasmtop / Request latency and kernel interference",
        "Request latency of traced workloads next to what the kernel did to them: "
        "preemptions, migrations, throttling.",
        workload_vars(),
    )
    by = "node, workload"
    legend = "{{workload}} {{node}}"
    requests = f"sum by ({by}) (rate(wasmtop_request_duration_seconds_count{{{WORKLOAD}}}{RI}))"
    b.row("Requests")
    b.add(
        ts(
            "Requests / s",
            "reqps",
            Q(requests, legend),
            description="HTTP requests that ended, server side (request read to response write).",
            w=8,
        ),
        ts(
            "Latency quantiles (exact, sliding window)",
            "s",
            Q(
                f"max by ({by}, quantile) "
                f'(wasmtop_request_latency_seconds{{{WORKLOAD}, quantile=~"0.5|0.99|0.999"}})',
                "q{{quantile}} " + legend,
            ),
            description="Exact quantiles over the collector's 60 s window (nearest rank), "
            "not interpolated. Dashed: the P99 target, 10 ms.",
            w=16,
            line_at=REQUEST_P99_S,
        ),
        ts(
            "Latency P99 and P99.9 from the histogram",
            "s",
            *quantiles("wasmtop_request_duration_seconds", ("0.99", "0.999"), by, legend),
            description="Interpolated within the buckets (0.25 ms ... 10 s), so it can be "
            "aggregated across nodes. Dashed: the P99.9 target, 20 ms.",
            line_at=REQUEST_P999_S,
        ),
        heat(
            "Request duration",
            Q(
                f"sum by (le) (rate(wasmtop_request_duration_seconds_bucket{{{WORKLOAD}}}{RI}))",
                "{{le}}",
                fmt=PromQueryFormat.HEATMAP,
            ),
            description="Requests per second by duration bucket.",
        ),
        ts(
            "Requests slower than 10 ms",
            "percentunit",
            Q(
                f"1 - sum by ({by}) (rate(wasmtop_request_duration_seconds_bucket"
                f'{{{WORKLOAD}, le="0.01"}}{RI})) / ({requests} > 0)',
                legend,
            ),
            description="Share of the requests above the P99 target (10 ms is a bucket bound).",
            w=8,
            max_=1,
        ),
        ts(
            "Mean request duration",
            "s",
            Q(
                f"sum by ({by}) "
                f"(rate(wasmtop_request_duration_seconds_sum{{{WORKLOAD}}}{RI})) "
                f"/ ({requests} > 0)",
                legend,
            ),
            description="Sum over count of the histogram.",
            w=8,
        ),
        ts(
            "Socket bypass share",
            "percentunit",
            Q(
                f"sum by ({by}) (rate(wasmtop_bypass_bytes_total{{{WORKLOAD}}}{RI})) / "
                f"(sum by ({by}) (rate(wasmtop_bypass_bytes_total{{{WORKLOAD}}}{RI})) + "
                f"sum by ({by}) (rate(wasmtop_stack_bytes_total{{{WORKLOAD}}}{RI})))",
                legend,
            ),
            description="Share of the bytes sent that went socket to socket (sockmap).",
            w=8,
            max_=1,
        ),
    )
    b.row("Kernel interference")
    b.add(
        ts(
            "Time waiting after preemption per request",
            "s",
            Q(
                f"sum by ({by}) (rate(wasmtop_preempt_delay_seconds_sum{{{WORKLOAD}}}{RI})) "
                f"/ ({requests} > 0)",
                legend,
            ),
            description="Preemption delay of all the workload's threads per request served: "
            "an upper bound of the time a request spent preempted (the exact per-request "
            "figure is in the Snapshot's traces and the OTLP spans, not in Prometheus).",
        ),
        ts(
            "Time in the run queue per request",
            "s",
            Q(
                f"sum by ({by}) (rate(wasmtop_runq_delay_seconds_total{{{WORKLOAD}}}{RI})) "
                f"/ ({requests} > 0)",
                legend,
            ),
            description="Run-queue delay (wake-up plus preemption delay) of all the "
            "workload's threads per request served: an upper bound of the time a request "
            "waited for a CPU, its queue wait (the exact per-request figures, queued_ms and "
            "preempted_ms, are in the Snapshot's traces and the OTLP spans, not in Prometheus).",
        ),
        ts(
            "Preemption delay P99 vs request latency P99",
            "s",
            Q(
                f"histogram_quantile(0.99, sum by (le, {by}) "
                f"(rate(wasmtop_preempt_delay_seconds_bucket{{{WORKLOAD}}}{RI})))",
                "preemption delay " + legend,
            ),
            Q(
                f'max by ({by}) (wasmtop_request_latency_seconds{{{WORKLOAD}, quantile="0.99"}})',
                "request latency " + legend,
            ),
            description="When the two rise together, the scheduler is part of the latency.",
        ),
        ts(
            "Wake-up delay P99 vs request latency P99",
            "s",
            Q(
                f"histogram_quantile(0.99, sum by (le, {by}) "
                f"(rate(wasmtop_wakeup_delay_seconds_bucket{{{WORKLOAD}}}{RI})))",
                "wake-up delay " + legend,
            ),
            Q(
                f'max by ({by}) (wasmtop_request_latency_seconds{{{WORKLOAD}, quantile="0.99"}})',
                "request latency " + legend,
            ),
            description="A request waits for its thread's wake-up before the handler runs: "
            "a wake-up delay P99 near the request P99 is queueing on the CPU, not the "
            "service. Dashed: the alerting default for the wake-up P99, 10 ms.",
            line_at=WAKEUP_P99_S,
        ),
        ts(
            "Preemptions and migrations per request",
            "short",
            Q(
                f"sum by ({by}) (rate(wasmtop_involuntary_switches_total{{{WORKLOAD}}}{RI})) "
                f"/ ({requests} > 0)",
                "preemptions " + legend,
            ),
            Q(
                f"sum by ({by}) (rate(wasmtop_migrations_total{{{WORKLOAD}}}{RI})) "
                f"/ ({requests} > 0)",
                "migrations " + legend,
            ),
            description="Involuntary switches and CPU migrations of the workload's threads "
            "per request served.",
        ),
        ts(
            "Preemptions over the threshold / s",
            "cps",
            Q(
                f"sum by ({by}) (rate(wasmtop_preemptions_over_threshold_total{{{WORKLOAD}}}{RI}))",
                legend,
            ),
            description="Preemptions longer than probes.sched.threshold_ms.",
        ),
        ts(
            "CPU throttled by the cgroup quota",
            "percentunit",
            Q(
                f"sum by ({by}) (rate(wasmtop_cpu_throttled_seconds_total{{{WORKLOAD}}}{RI}))",
                "throttled time " + legend,
            ),
            description="Time the workload's cgroup was throttled per second of wall time: "
            "a quota too small for its bursts shows up here, not as preemption.",
            w=8,
        ),
        ts(
            "Throttled periods / s",
            "cps",
            Q(
                f"sum by ({by}) (rate(wasmtop_cpu_throttled_periods_total{{{WORKLOAD}}}{RI}))",
                legend,
            ),
            description="Scheduler periods in which the workload's cgroup was throttled.",
            w=8,
        ),
        ts(
            "Affinity stability",
            "percentunit",
            Q(f"max by ({by}) (wasmtop_affinity_stability_ratio{{{WORKLOAD}}})", legend),
            description="Migrations per context switch in the last window (0 = never moved).",
            w=8,
        ),
    )
    return b


def wasm_runtime() -> Board:
    b = Board(
        "wasmtop-wasm-runtime",
        "wasmtop / Wasm runtime",
        "WebAssembly runtimes (wasmtime, WasmEdge, Spin, Wasmer): cold start, compile and "
        "instantiate, memory.",
        workload_vars(runtime=True),
    )
    by = "node, workload"
    legend = "{{workload}} {{node}}"
    b.row("Start")
    b.add(
        ts(
            "Last cold start",
            "s",
            Q(f"max by ({by}) (wasmtop_cold_start_seconds{{{WASM}}})", legend),
            description="The last process cold start of the workload: exec to its first "
            "listen. Dashed: the alerting default, 5 ms.",
            line_at=COLD_START_S,
        ),
        single(
            "Cold starts in the time range",
            "short",
            Q(
                f"sum by (node) (increase(wasmtop_cold_starts_total{{{WASM}}}[$__range]))",
                "{{node}}",
                True,
            ),
            description="Process cold starts (exec to first listen) measured.",
            h=8,
        ),
        bars(
            "Last cold start by workload",
            "s",
            Q(f"max by ({by}) (wasmtop_cold_start_seconds{{{WASM}}})", legend, True),
            description="The latest value of each workload's last cold start.",
            w=6,
        ),
    )
    b.row("Compile and instantiate")
    # Not guest calls (call="call", a host's Rust API): their time is the guest's work (and
    # the host's runtime's, such as Extism's kernel calls), not compile or instantiate.
    ci = f'{WASM}, call=~"compile|instantiate"'
    calls = f"sum by ({by}, call) (rate(wasmtop_wasm_calls_total{{{ci}}}{RI}))"
    seconds = f"sum by ({by}, call) (rate(wasmtop_wasm_call_seconds_total{{{ci}}}{RI}))"
    b.add(
        ts(
            "Compile / instantiate calls / s",
            "cps",
            Q(calls, "{{call}} " + legend),
            description="Calls into the runtime's compile and instantiate API (uprobes).",
            w=8,
        ),
        ts(
            "Mean compile / instantiate latency",
            "s",
            Q(f"{seconds} / ({calls} > 0)", "{{call}} " + legend),
            description="Time in the runtime's API per call.",
            w=8,
        ),
        ts(
            "Time in compile / instantiate",
            "percentunit",
            Q(seconds, "{{call}} " + legend),
            description="Seconds in the runtime's compile or instantiate API per second "
            "(100% = one thread busy all the time).",
            w=8,
        ),
    )
    b.row("Memory and CPU")
    b.add(
        ts(
            "Resident memory",
            "bytes",
            Q(f"max by ({by}) (wasmtop_rss_bytes{{{WASM}}})", "rss " + legend),
            Q(f"max by ({by}) (wasmtop_memory_current_bytes{{{WASM}}})", "cgroup " + legend),
            Q(f"max by ({by}) (wasmtop_memory_limit_bytes{{{WASM}}})", "limit " + legend),
            description="RSS summed over the workload's processes; its cgroup's use and limit.",
            w=8,
        ),
        ts(
            "RSS growth",
            "Bps",
            Q(f"max by ({by}) (wasmtop_rss_growth_bytes_per_second{{{WASM}}})", legend),
            description="Least-squares slope of RSS over collector.growth_window_s: a steady "
            "climb is a leak. Dashed: the alerting default, 2 MB per minute.",
            w=8,
            line_at=RSS_GROWTH_BPS,
        ),
        ts(
            "CPU use",
            "percentunit",
            Q(f"max by ({by}) (wasmtop_cpu_usage_ratio{{{WASM}}})", legend),
            description="CPU use in the last sample (100% = one CPU).",
            w=8,
        ),
        tab(
            "Runtimes",
            "bytes",
            Q(
                f"max by (node, workload, runtime, namespace, pod) (wasmtop_rss_bytes{{{WASM}}})",
                instant=True,
                fmt=PromQueryFormat.TABLE,
            ),
            description="Every workload that embeds a WebAssembly runtime, with its RSS.",
            h=7,
        ),
    )
    return b


def alerts() -> Board:
    b = Board(
        "wasmtop-alerts",
        "wasmtop / Alerts",
        "Alerts the daemons evaluate on their nodes, the ones left out, and their delivery "
        "to Alertmanager.",
    )
    firing = f"wasmtop_alert_firing{{{NODE}}}"
    b.row("Now")
    b.add(
        single(
            "Firing",
            "short",
            Q(f"count({firing} == 1) or vector(0)", "firing", True),
            description="Alert instances firing now (wasmtop_alert_firing == 1).",
            steps=((None, "green"), (1, "red")),
        ),
        single(
            "Pending",
            "short",
            Q(f"count({firing} == 0) or vector(0)", "pending", True),
            description="Alert instances whose condition holds but not yet long enough.",
            steps=((None, "green"), (1, "orange")),
        ),
        single(
            "Suppressed",
            "short",
            Q(f"sum(wasmtop_alerts_suppressed{{{NODE}}}) or vector(0)", "suppressed", True),
            description="Instances left out at the last evaluation by "
            "alerts.max_alerts_per_rule: alerts that exist but are not shown or sent.",
            steps=((None, "green"), (1, "orange")),
        ),
        single(
            "Rules loaded",
            "short",
            Q(f"sum by (node) (wasmtop_alert_rules{{{NODE}}})", "{{node}}", True),
            description="Alert rules each node evaluates (0 with alerts.enabled: false).",
            steps=((None, "orange"), (1, "green")),
        ),
        tab(
            "Alerts",
            "none",
            Q(
                f"max by (node, alertname, severity, workload, namespace, pod, probe) ({firing})",
                instant=True,
                fmt=PromQueryFormat.TABLE,
            ),
            description="Every pending or firing alert instance (resolved ones have no "
            "series). Value: 1 firing, 0 pending.",
            mappings={"0": ("pending", "orange"), "1": ("firing", "red")},
        ),
    )
    b.row("Over time")
    b.add(
        ts(
            "Firing alert instances by rule",
            "short",
            Q(
                f"count by (node, alertname, severity) ({firing} == 1)",
                "{{alertname}} {{severity}} {{node}}",
            ),
            description="How many workloads (or probes) each rule fires for.",
        ),
        ts(
            "Suppressed alert instances by rule",
            "short",
            Q(
                f"sum by (node, alertname) (wasmtop_alerts_suppressed{{{NODE}}})",
                "{{alertname}} {{node}}",
            ),
            description="Past alerts.max_alerts_per_rule: raise it, or the rule is too broad.",
        ),
    )
    b.row("Delivery to Alertmanager")
    posts = f"wasmtop_alertmanager_posts_total{{{NODE}"
    b.add(
        ts(
            "Posts to Alertmanager / s by outcome",
            "cps",
            Q(
                f"sum by (node, url, outcome) (rate({posts}}}{RI}))",
                "{{outcome}} {{url}} {{node}}",
            ),
            Q(
                f"sum by (node, url) (rate(wasmtop_alertmanager_retries_total{{{NODE}}}{RI}))",
                "retries {{url}} {{node}}",
            ),
            description="failed posts are retried with backoff; rejected ones (a 4xx) are "
            "dropped and logged.",
        ),
        ts(
            "Alerts sent / s",
            "cps",
            Q(
                f"sum by (node, url) (rate(wasmtop_alertmanager_alerts_sent_total{{{NODE}}}{RI}))",
                "{{url}} {{node}}",
            ),
            description="Alerts in the posts, firing and resolved, re-sends included.",
        ),
        single(
            "Failed and rejected posts in the time range",
            "short",
            Q(
                f'sum by (outcome) (increase({posts}, outcome=~"failed|rejected"}}[$__range]))',
                "{{outcome}}",
                True,
            ),
            description="Non-zero: an Alertmanager was unreachable (failed) or refused the "
            "payload (rejected).",
            w=12,
            steps=((None, "green"), (1, "red")),
        ),
        single(
            "Config reloads refused in the time range",
            "short",
            Q(
                "sum by (node) (increase(wasmtop_config_reloads_total"
                f'{{{NODE}, result="failed"}}[$__range]))',
                "{{node}}",
                True,
            ),
            description="A refused reload (e.g. a rule file with a mistake) keeps the "
            "running rules.",
            w=12,
            steps=((None, "green"), (1, "red")),
        ),
    )
    return b


DASHBOARDS = {
    "wasmtop-node-overview.json": node_overview,
    "wasmtop-workload.json": workload_drilldown,
    "wasmtop-requests.json": requests_latency,
    "wasmtop-wasm-runtime.json": wasm_runtime,
    "wasmtop-alerts.json": alerts,
}


def render() -> dict[str, str]:
    """File name -> the dashboard's JSON text, exactly as committed."""
    return {name: make().json() for name, make in DASHBOARDS.items()}


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--check", action="store_true", help="compare with the files instead of writing them"
    )
    parser.add_argument("--out", type=Path, default=OUT, help="dashboards folder")
    args = parser.parse_args(argv)
    stale = []
    for name, text in render().items():
        path = args.out / name
        old = path.read_text() if path.exists() else ""
        if old == text:
            continue
        if args.check:
            stale.append(name)
            sys.stdout.writelines(
                difflib.unified_diff(
                    old.splitlines(True), text.splitlines(True), str(path), f"{name} (generated)"
                )
            )
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
            print(f"wrote {path}")
    extra = sorted(p.name for p in args.out.glob("*.json") if p.name not in DASHBOARDS)
    if extra:
        print(f"not generated by {Path(__file__).name}: {', '.join(extra)}", file=sys.stderr)
        return 1
    if stale:
        print(f"out of date: {', '.join(stale)}; run: python grafana/generate.py", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

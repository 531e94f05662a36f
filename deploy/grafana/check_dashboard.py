#!/usr/bin/env python3
"""Checks a Grafana dashboard against the metric names the server serves (stdlib only).

    python3 deploy/grafana/check_dashboard.py [dashboard.json [metric-names.txt]]

The dashboard must be a dashboard with panels, a Prometheus data-source variable that every query uses, and a
`destination` variable; every metric a query names must be in metric-names.txt. Prints what is wrong and exits
1, or prints a summary and exits 0.
"""

import json
import re
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
PREFIX = "groove_destination_"
# A metric name as PromQL writes it; the look-behind keeps label values ("…") and longer names out.
METRIC = re.compile(r'(?<![\w":.-])(' + PREFIX + r'[a-zA-Z0-9_]+)')
HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")
# A destination label matcher with a fixed value instead of the dashboard's variable.
FIXED_DESTINATION = re.compile(r'\bdestination\s*!?[=~]+\s*"(?!\$destination")')


def load_names(path):
    """The names a query may use: counters and gauges as listed, histograms with their three suffixes."""
    allowed = {}
    for number, line in enumerate(path.read_text().splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        fields = line.split()
        if len(fields) != 2 or fields[1] not in ("counter", "gauge", "histogram"):
            raise SystemExit(f"{path}:{number}: expected `<name> counter|gauge|histogram`, got {line!r}")
        name, kind = fields
        if kind == "histogram":
            for suffix in HISTOGRAM_SUFFIXES:
                allowed[name + suffix] = name
        else:
            allowed[name] = name
    return allowed


def all_panels(panels):
    for panel in panels:
        yield panel
        # Collapsed rows hold their panels inside.
        yield from all_panels(panel.get("panels", []))


def check(dashboard, allowed):
    """Returns (problems, names used)."""
    problems = []
    used = set()
    if not isinstance(dashboard, dict) or not isinstance(dashboard.get("panels"), list):
        return ["not a dashboard: no panels list at the top level"], used
    if not dashboard.get("title") or not dashboard.get("uid"):
        problems.append("the dashboard needs a title and a uid")

    variables = {v.get("name"): v for v in dashboard.get("templating", {}).get("list", [])}
    source = variables.get("datasource")
    if not source or source.get("type") != "datasource" or source.get("query") != "prometheus":
        problems.append("no `datasource` variable of type datasource for prometheus")
    if "destination" not in variables:
        problems.append("no `destination` variable")

    def check_expression(where, expression):
        names = METRIC.findall(expression)
        if not names:
            problems.append(f"{where}: names no {PREFIX}* metric: {expression}")
        for name in names:
            if name not in allowed:
                problems.append(f"{where}: unknown metric {name}")
            else:
                used.add(allowed[name])

    for name, variable in variables.items():
        if variable.get("type") == "query":
            query = variable.get("query")
            text = query.get("query", "") if isinstance(query, dict) else str(query or "")
            check_expression(f"variable {name}", text)

    queried = 0
    for panel in all_panels(dashboard["panels"]):
        if panel.get("type") == "row":
            continue
        title = panel.get("title") or f"panel {panel.get('id')}"
        targets = panel.get("targets") or []
        if not targets:
            problems.append(f"{title}: no queries")
        for target in targets:
            expression = target.get("expr", "")
            check_expression(title, expression)
            if FIXED_DESTINATION.search(expression):
                problems.append(f"{title}: filters by destination without $destination")
            uid = (target.get("datasource") or panel.get("datasource") or {}).get("uid")
            if uid != "${datasource}":
                problems.append(f"{title}: data source {uid!r}, not ${{datasource}}")
        queried += 1
    if queried == 0:
        problems.append("no panels with queries")
    return problems, used


def main(argv):
    dashboard_path = Path(argv[1]) if len(argv) > 1 else HERE / "groove-destination.json"
    names_path = Path(argv[2]) if len(argv) > 2 else HERE / "metric-names.txt"
    allowed = load_names(names_path)
    try:
        dashboard = json.loads(dashboard_path.read_text())
    except json.JSONDecodeError as error:
        print(f"{dashboard_path}: not JSON: {error}")
        return 1
    problems, used = check(dashboard, allowed)
    for problem in problems:
        print(f"{dashboard_path}: {problem}")
    if problems:
        return 1
    unused = sorted(set(allowed.values()) - used)
    note = f"; not shown: {', '.join(unused)}" if unused else ""
    print(f"{dashboard_path}: ok, {len(used)} metrics used{note}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))

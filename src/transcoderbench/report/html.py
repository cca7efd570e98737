"""report.html: one self-contained page (inline CSS, PNGs as data URIs, no scripts, no network).

The page is built from the JSON files in an output directory and nothing else, so
``transcoderbench report DIR`` rebuilds exactly the page that ``evaluate``/``compare`` wrote.
"""

from __future__ import annotations

import base64
import html
import json
from pathlib import Path
from typing import Any

from transcoderbench.errors import UserError
from transcoderbench.io import json_ready, write_files
from transcoderbench.report.catalog import (
    METRICS,
    PREFIX_COLUMNS,
    SECTIONS,
    dig,
    fmt,
    fmt_interval,
    interval_of,
    prefix_rows,
)
from transcoderbench.report.comparison import comparison_record
from transcoderbench.report.plots import all_plots
from transcoderbench.report.suggestions import THRESHOLD_SOURCES, THRESHOLDS, suggest
from transcoderbench.report.summary import (
    absorption_value,
    downstream_note,
    headline_fields,
    source_text,
    uncertainty_line,
)

REPORT_NAME = "report.html"

CSS = """
body { font-family: system-ui, -apple-system, 'Segoe UI', Roboto, 'DejaVu Sans', sans-serif; margin: 0;
       background: #f6f7f9; color: #1d2330; line-height: 1.45; }
main { max-width: 1180px; margin: 0 auto; padding: 24px 32px 48px; }
h1 { font-size: 1.7em; margin: 0.2em 0 0.1em; }
h2 { font-size: 1.25em; margin-top: 2em; border-bottom: 2px solid #d5dae3; padding-bottom: 4px; }
h3 { font-size: 1.05em; margin-bottom: 0.3em; }
table { border-collapse: collapse; background: #fff; margin: 8px 0 16px; font-size: 0.92em; }
th, td { border: 1px solid #d5dae3; padding: 4px 9px; text-align: left; vertical-align: top; }
th { background: #eaedf2; }
td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
span.ci { color: #5a6475; font-size: 0.85em; }
code { background: #eaedf2; padding: 0 3px; border-radius: 3px; font-size: 0.9em; }
.meta { color: #3b4455; font-size: 0.95em; }
.win { color: #116329; font-weight: 600; }
.nodiff { color: #5a6475; }
figure { background: #fff; border: 1px solid #d5dae3; margin: 12px 0; padding: 10px; }
figure img { max-width: 100%; height: auto; display: block; }
figcaption { font-size: 0.9em; color: #3b4455; margin-top: 6px; }
.card { background: #fff; border-left: 4px solid #c77700; padding: 8px 12px; margin: 8px 0; }
.card.ok { border-left-color: #116329; }
dl.explain dt { font-weight: 600; margin-top: 8px; }
dl.explain dd { margin-left: 18px; }
"""


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


# -------------------------------------------------------------- loading
def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise UserError(f"{path} is not valid JSON ({exc.msg} at line {exc.lineno}): rerun the evaluation") from exc
    if not isinstance(data, dict):
        raise UserError(f"{path} does not hold a JSON object: it is not a transcoderbench output")
    return data


def load_results(directory: str | Path) -> tuple[dict[str, Any], dict[str, dict[str, Any]], dict[str, Any] | None]:
    """``(meta, metrics by name, comparison or None)`` from an evaluate or compare output directory."""
    d = Path(directory)
    if not d.is_dir():
        raise UserError(f"{d} is not a directory: pass the --output_dir of an evaluate or compare run")
    comp_path = d / "comparison.json"
    if comp_path.is_file():
        comparison = _read_json(comp_path)
        names = list(comparison.get("transcoders") or {})
        metrics: dict[str, dict[str, Any]] = {}
        for name in names:
            path = d / f"{name}_metrics.json"
            if not path.is_file():
                raise UserError(
                    f"{comp_path} names transcoder {name!r} but {path.name} is missing from {d}: "
                    "rerun compare into this directory"
                )
            m = _read_json(path)
            m.pop("meta", None)
            metrics[name] = m
        return comparison.get("meta") or {}, metrics, comparison
    metrics_path = d / "metrics.json"
    if metrics_path.is_file():
        m = _read_json(metrics_path)
        meta = m.pop("meta", None) or {}
        return meta, {str(m.get("name") or "transcoder"): m}, None
    raise UserError(
        f"{d} has neither metrics.json nor comparison.json: pass the --output_dir of an evaluate or compare run"
    )


# ------------------------------------------------------------- sections
def _header(meta: dict[str, Any], metrics: dict[str, dict[str, Any]], comparison: dict[str, Any] | None) -> str:
    model, data, tok = meta.get("model", {}), meta.get("dataset", {}), meta.get("tokens", {})
    title = "transcoderbench comparison" if comparison else "transcoderbench evaluation"
    stop = tok.get("forward_pass_stopped_after_layer")
    first = next(iter(metrics.values()), {})
    return (
        f"<h1>{_e(title)}: {_e(', '.join(metrics))}</h1>\n<p class='meta'>"
        f"<b>model</b> {_e(model.get('name'))} ({_e(model.get('family'))}, {_e(model.get('n_layers'))} layers, "
        f"d_model {_e(model.get('d_model'))}, {_e(model.get('dtype'))} on {_e(model.get('device'))})<br>"
        f"<b>dataset</b> {_e(data.get('name'))}<br>"
        f"<b>tokens</b> {_e(format(tok.get('n_tokens_evaluated') or 0, ','))} evaluated of "
        f"{_e(format(tok.get('n_positions') or 0, ','))} positions read ({_e(tok.get('n_batches'))} batches x "
        f"{_e(tok.get('batch_size'))} sequences x {_e(tok.get('seq_len'))} tokens); BOS, PAD and EOS positions "
        f"excluded from every metric<br>"
        f"<b>forward</b> {_e(f'stopped after layer {stop}' if stop is not None else 'full forward pass')}<br>"
        f"<b>{_e(uncertainty_line(first).split(':', 1)[0])}</b>{_e(':' + uncertainty_line(first).split(':', 1)[1])}<br>"
        f"<b>created</b> {_e(meta.get('created'))}</p>\n"
    )


def _transcoders(metrics: dict[str, dict[str, Any]]) -> str:
    rows = []
    for name, m in metrics.items():
        tc, src, sites = m.get("transcoder") or {}, m.get("source") or {}, m.get("sites") or {}
        prefixes = tc.get("prefix_ends") or []
        site_cells = []
        for side in ("input", "output"):
            s = sites.get(side) or {}
            norm = f", normalised without gain ({s['normalize']})" if s.get("normalize") else ""
            site_cells.append(
                f"<code>{_e(s.get('name'))}</code><br>{_e(s.get('direction'))} of "
                f"<code>{_e(s.get('module'))}</code>{_e(norm)}"
            )
        notes = "".join(f"<br>note: {_e(n)}" for n in src.get("notes") or [])
        rows.append(
            f"<tr><td><b>{_e(name)}</b></td><td>{_e(tc.get('architecture'))}</td>"
            f"<td class='num'>{_e(tc.get('d_in'))} &rarr; {_e(tc.get('d_sae'))} &rarr; {_e(tc.get('d_out'))}</td>"
            f"<td>{_e(prefixes if len(prefixes) > 1 else '')}</td><td>{site_cells[0]}</td><td>{site_cells[1]}</td>"
            f"<td>{_e(source_text(src))}{notes}</td></tr>"
        )
    return (
        "<h2>Transcoders</h2>\n<table><tr><th>name</th><th>architecture</th><th>d_in &rarr; d_sae &rarr; d_out</th>"
        "<th>nested prefixes</th><th>input site</th><th>output site</th><th>source</th></tr>\n"
        + "\n".join(rows)
        + "</table>\n"
    )


def _cell(value: Any, spec: str, iv: dict[str, Any] | None) -> str:
    ci = f"<br><span class='ci'>{_e(fmt_interval(iv, spec))}</span>" if iv else ""
    return f"<td class='num'>{_e(fmt(value, spec))}{ci}</td>"


def _summary_table(metrics: dict[str, dict[str, Any]]) -> str:
    names = list(metrics)
    head = "".join(f"<th>{_e(n)}</th>" for n in names)
    out = [
        "<h2>Summary</h2>",
        "<p>Values over all evaluated tokens; the bracket under a value is its bootstrap interval over sequences "
        "(where one exists). The <i>field</i> column names where the number is in the metrics JSON; the first rows "
        "are the field names the seed code printed.</p>",
        f"<table><tr><th>metric</th><th>field</th>{head}</tr>",
    ]
    seed_rows = {n: headline_fields(m) for n, m in metrics.items()}
    for i, (field, _, spec, _) in enumerate(seed_rows[names[0]]):
        cells = []
        for n in names:
            value = seed_rows[n][i][1]
            if value is None and field == "absorption":
                cells.append(f"<td>{_e(absorption_value(metrics[n])[1])}</td>")
            else:
                info = next((x for x in METRICS if x.seed_field == field), None)
                cells.append(_cell(value, spec, interval_of(metrics[n], info) if info else None))
        out.append(f"<tr><td><b>{_e(field)}</b></td><td><code>{_e(field)}</code></td>{''.join(cells)}</tr>")
    section = None
    for info in METRICS:
        if all(dig(m, info.path) is None for m in metrics.values()):
            continue
        if info.section != section:
            section = info.section
            out.append(f"<tr><th colspan='{2 + len(names)}'>{_e(section)}</th></tr>")
        cells = "".join(_cell(dig(metrics[n], info.path), info.spec, interval_of(metrics[n], info)) for n in names)
        out.append(f"<tr><td>{_e(info.label)}</td><td><code>{_e(info.key)}</code></td>{cells}</tr>")
    out.append("</table>")
    notes = []
    for n, m in metrics.items():
        if not isinstance(m.get("downstream"), dict):
            notes.append(f"{n}: downstream: {downstream_note(m)}")
        if not isinstance(m.get("absorption"), dict):
            notes.append(f"{n}: absorption: {absorption_value(m)[1]}")
        sp = m.get("sparsity") or {}
        if sp:
            notes.append(
                f"{n}: dead and dense latents are measured over {sp.get('n_tokens', 0):,} tokens; a latent may "
                "be alive on other text"
            )
    if notes:
        out.append("<ul>" + "".join(f"<li>{_e(x)}</li>" for x in notes) + "</ul>")
    return "\n".join(out) + "\n"


def _verdicts(comparison: dict[str, Any]) -> str:
    rows = []
    for c in comparison.get("categories") or []:
        cls = "win" if c.get("winner") else "nodiff"
        pairs = "<br>".join(
            f"{_e(p['a'])} &minus; {_e(p['b'])}: {_e(fmt(p['difference'], '.4g'))} "
            f"<span class='ci'>{_e(fmt_interval(p, '.4g'))}</span>{' <b>significant</b>' if p.get('significant') else ''}"
            for p in c.get("pairs") or []
            if p.get("low") is not None
        )
        values = ", ".join(f"{n}: {fmt(v, '.4g')}" for n, v in (c.get("values") or {}).items())
        rows.append(
            f"<tr><td><b>{_e(c['name'])}</b><br><span class='ci'>{_e(c.get('why'))}</span></td>"
            f"<td class='{cls}'>{_e(c.get('verdict'))}</td><td>{_e(values)}</td><td>{pairs}</td>"
            f"<td><span class='ci'>{_e(c.get('how'))}</span></td></tr>"
        )
    note = str(comparison.get("note", ""))
    return (
        "<h2>Verdicts</h2>\n<p>" + _e(note[:1].upper() + note[1:]) + ". Both transcoders saw exactly the same "
        "sequences, so the bootstrap resamples them together.</p>\n<table><tr><th>category</th><th>verdict</th><th>values</th>"
        "<th>paired difference [interval]</th><th>how decided</th></tr>\n" + "\n".join(rows) + "</table>\n"
    )


def _plots(metrics: dict[str, dict[str, Any]]) -> str:
    out = ["<h2>Plots</h2>"]
    for p in all_plots(metrics):
        data = base64.b64encode(p.png).decode("ascii")
        out.append(
            f"<figure><h3>{_e(p.title)}</h3><img alt='{_e(p.title)}' src='data:image/png;base64,{data}'>"
            f"<figcaption>{_e(p.caption)}</figcaption></figure>"
        )
    return "\n".join(out) + "\n"


def _prefix_tables(metrics: dict[str, dict[str, Any]]) -> str:
    out = []
    for name, m in metrics.items():
        rows = prefix_rows(m)
        if not rows:
            continue
        cols = [(k, label, spec) for k, label, spec in PREFIX_COLUMNS if any(r.get(k) is not None for r in rows)]
        head = "".join(f"<th>{_e(label)}</th>" for _, label, _ in cols)
        body = "".join(
            "<tr><td class='num'>"
            + _e(r["prefix_end"])
            + "</td>"
            + "".join(_cell(r.get(k), spec, r.get(f"{k}_interval")) for k, _, spec in cols)
            + "</tr>"
            for r in rows
        )
        out.append(f"<h3>{_e(name)}</h3><table><tr><th>first N latents</th>{head}</tr>{body}</table>")
    if not out:
        return ""
    return (
        "<h2>Matryoshka prefixes</h2>\n<p>Each row reconstructs with only the first N latents (the nested prefix); "
        "L0 within the prefix counts active latents among those N.</p>\n" + "\n".join(out) + "\n"
    )


def _suggestions(metrics: dict[str, dict[str, Any]]) -> str:
    out = [
        "<h2>Suggestions</h2>",
        "<p>Rules applied to the measured metrics; every threshold is listed below with "
        "where it comes from. Each suggestion names the setting to change and why.</p>",
    ]
    for name, m in metrics.items():
        out.append(f"<h3>{_e(name)}</h3>")
        if (m.get("source") or {}).get("format") in ("gemma_scope_1", "gemma_scope_2", "saelens"):
            out.append(
                "<p class='meta'>Pretrained transcoder: the training suggestions apply only if you train one "
                "like it.</p>"
            )
        found = suggest(m)
        if not found:
            out.append("<div class='card ok'>No metric crossed a threshold.</div>")
        for s in found:
            out.append(
                f"<div class='card'><b>{_e(s.finding)}</b><br>change: {_e(s.change)}<br>why: {_e(s.why)}"
                f"<br><span class='ci'>rule <code>{_e(s.rule)}</code>, threshold "
                f"{_e(THRESHOLDS.get(s.rule))} ({_e(THRESHOLD_SOURCES.get(s.rule, ''))})</span></div>"
            )
    return "\n".join(out) + "\n"


def _explanations() -> str:
    out = [
        "<h2>What the numbers mean</h2>",
        "<p>y is the target at the transcoder's output site, y_hat its reconstruction, t runs over the N kept tokens "
        "(BOS, PAD and EOS excluded), d is the output width. Ranges and their sources are in "
        "docs/INTERPRETABILITY_EVALUATION.md.</p>",
    ]
    for section in SECTIONS:
        out.append(f"<h3>{_e(section)}</h3><dl class='explain'>")
        for info in (i for i in METRICS if i.section == section):
            direction = {True: " Lower is better.", False: " Higher is better.", None: ""}[info.lower_is_better]
            out.append(
                f"<dt>{_e(info.label)} <code>{_e(info.key)}</code></dt><dd><code>{_e(info.formula)}</code><br>"
                f"{_e(info.meaning)}.{_e(direction)}"
                + (" Bootstrap interval over sequences." if info.interval else "")
                + "</dd>"
            )
        out.append("</dl>")
    out.append(
        "<h3>Intervals and verdicts</h3><p>Tokens of one sequence are correlated, so intervals come from "
        "resampling whole sequences (a Poisson bootstrap: each resample counts every sequence a Poisson(1) "
        "number of times, seeded by the sequence's index); the interval is the central percentile range of the "
        "resampled metric. Paired differences resample both transcoders with the same counts. Dead latents and "
        "absorption have no per-sequence form and no interval; decoder redundancy depends on the weights only.</p>"
    )
    rows = "".join(
        f"<tr><td><code>{_e(k)}</code></td><td class='num'>{_e(v)}</td><td>{_e(THRESHOLD_SOURCES.get(k, ''))}</td></tr>"
        for k, v in THRESHOLDS.items()
    )
    out.append(
        f"<h3>Suggestion thresholds</h3><table><tr><th>rule</th><th>threshold</th><th>source</th></tr>{rows}</table>"
    )
    return "\n".join(out) + "\n"


def render_report(
    meta: dict[str, Any], metrics: dict[str, dict[str, Any]], comparison: dict[str, Any] | None = None
) -> str:
    """The whole page as a string (deterministic for the same inputs)."""
    if comparison is None and len(metrics) > 1:
        comparison = comparison_record(meta, metrics)
    versions = ", ".join(f"{k} {v}" for k, v in (meta.get("versions") or {}).items())
    body = (
        _header(meta, metrics, comparison)
        + _transcoders(metrics)
        + (_verdicts(comparison) if comparison else "")
        + _summary_table(metrics)
        + _plots(metrics)
        + _prefix_tables(metrics)
        + _suggestions(metrics)
        + _explanations()
        + f"<p class='meta'>versions: {_e(versions)}<br>Rebuild this page from the JSON files with "
        "<code>transcoderbench report DIR</code>.</p>"
    )
    title = ("comparison: " if comparison else "evaluation: ") + ", ".join(metrics)
    return (
        f"<!DOCTYPE html>\n<html lang='en'>\n<head>\n<meta charset='utf-8'>\n<title>transcoderbench {_e(title)}"
        f"</title>\n<style>{CSS}</style>\n</head>\n<body>\n<main>\n{body}</main>\n</body>\n</html>\n"
    )


def build_report(directory: str | Path) -> str:
    """The report of an evaluate/compare output directory, from its JSON files alone."""
    meta, metrics, comparison = load_results(directory)
    return render_report(meta, metrics, comparison)


def write_report(directory: str | Path) -> Path:
    """Write ``report.html`` into ``directory`` (atomically) from the JSON files there; returns its path."""
    text = build_report(directory)
    return write_files(directory, {REPORT_NAME: text})[0]


def add_report(
    files: dict[str, Any],
    meta: dict[str, Any],
    metrics: dict[str, dict[str, Any]],
    comparison: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """``files`` plus report.html, rendered from exactly what the JSON files will hold.

    So the page can be written together with the JSON (all or nothing, by ``write_files``), and
    ``transcoderbench report DIR`` rebuilds the same page from those files.
    """
    data = json.loads(json.dumps(json_ready({"meta": meta, "metrics": metrics, "comparison": comparison})))
    return {**files, REPORT_NAME: render_report(data["meta"], data["metrics"], data["comparison"])}

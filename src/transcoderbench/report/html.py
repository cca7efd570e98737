"""report.html: one self-contained page (inline CSS, PNGs as data URIs, no scripts, no network).

The page is built from the JSON files in an output directory and nothing else, so
``transcoderbench report DIR`` rebuilds exactly the page that ``evaluate``/``compare`` wrote.
"""

from __future__ import annotations

import base64
import html
import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from transcoderbench.errors import UserError
from transcoderbench.io import json_ready, printable, write_files
from transcoderbench.report.catalog import (
    METRICS,
    PREFIX_COLUMNS,
    SECTIONS,
    fmt,
    fmt_interval,
    interval_of,
    prefix_rows,
    value_of,
)
from transcoderbench.report.comparison import Results, as_results, comparison_record
from transcoderbench.report.plots import all_plots
from transcoderbench.report.suggestions import THRESHOLD_SOURCES, THRESHOLDS, suggest
from transcoderbench.report.summary import (
    absorption_caution,
    absorption_value,
    as_meta,
    downstream_note,
    headline_fields,
    is_pretrained,
    sides,
    site_text,
    source_text,
    uncertainty_line,
)
from transcoderbench.results import (
    Comparison,
    Interval,
    ModelInfo,
    RunMeta,
    Tokens,
    TranscoderInfo,
    TranscoderResult,
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


def _read_result(path: Path) -> tuple[dict[str, Any], TranscoderResult]:
    """(raw meta, record without meta) of one metrics file."""
    data = _read_json(path)
    meta = data.pop("meta", None) or {}
    return meta, TranscoderResult.from_json(data, str(path))


def load_records(directory: str | Path) -> tuple[RunMeta, dict[str, TranscoderResult], Comparison | None]:
    """``(meta, records by name, comparison or None)`` from an evaluate or compare output directory.

    A file of the wrong shape (a hand-edited number that became a string, a section that became a
    list) is a one-line UserError naming the file and the key.
    """
    d = Path(directory)
    if not d.is_dir():
        raise UserError(f"{d} is not a directory: pass the --output_dir of an evaluate or compare run")
    comp_path = d / "comparison.json"
    if comp_path.is_file():
        comparison = Comparison.from_json(_read_json(comp_path), str(comp_path))
        metrics: dict[str, TranscoderResult] = {}
        for name in comparison.transcoders:
            path = _inside(d, f"{name}_metrics.json", comp_path)
            if not path.is_file():
                raise UserError(
                    f"{comp_path} names transcoder {name!r} but {path.name} is missing from {d}: "
                    "rerun compare into this directory"
                )
            metrics[name] = _read_result(path)[1]
        return comparison.meta or RunMeta(), metrics, comparison
    metrics_path = d / "metrics.json"
    if metrics_path.is_file():
        meta, m = _read_result(metrics_path)
        name = str(m.name or "transcoder")
        if not _NAME.fullmatch(name):
            raise UserError(f"{metrics_path}: name {printable(name)!r} may use only letters, digits, . _ - ; fix it")
        return RunMeta.from_json(meta, f"{metrics_path}: meta"), {name: m}, None
    raise UserError(
        f"{d} has neither metrics.json nor comparison.json: pass the --output_dir of an evaluate or compare run"
    )


#: Transcoder names as every command accepts them (they name files and label plots; no ``$`` math text).
_NAME = re.compile(r"[A-Za-z0-9._-]+")


def _inside(d: Path, file_name: str, named_in: Path) -> Path:
    """``d / file_name``, refusing names that would read outside ``d`` (``../x``, absolute, symlinks out)."""
    path = d / file_name
    try:
        inside = (
            _NAME.fullmatch(file_name) is not None
            and "/" not in file_name
            and "\\" not in file_name
            and path.resolve().is_relative_to(d.resolve())
        )
    except (OSError, RuntimeError):
        inside = False
    if not inside:
        raise UserError(
            f"{named_in}: the transcoder name in {printable(file_name)!r} points outside {d}; names may use only "
            "letters, digits, . _ -"
        )
    return path


def load_results(directory: str | Path) -> tuple[dict[str, Any], dict[str, dict[str, Any]], dict[str, Any] | None]:
    """``load_records`` as the JSON dicts they were read from (``meta`` moved out of each metrics dict)."""
    meta, metrics, comparison = load_records(directory)
    return (
        meta.to_json(),
        {name: m.to_json() for name, m in metrics.items()},
        comparison.to_json() if comparison else None,
    )


# ------------------------------------------------------------- sections
def _header(meta: RunMeta, metrics: Results, comparison: Comparison | None) -> str:
    model, tok = meta.model or ModelInfo(), meta.tokens or Tokens()
    title = "transcoderbench comparison" if comparison else "transcoderbench evaluation"
    stop = tok.forward_pass_stopped_after_layer
    first = next(iter(metrics.values()), TranscoderResult())
    label, rest = uncertainty_line(first).split(":", 1)
    return (
        f"<h1>{_e(title)}: {_e(', '.join(metrics))}</h1>\n<p class='meta'>"
        f"<b>model</b> {_e(model.name)} ({_e(model.family)}, {_e(model.n_layers)} layers, "
        f"d_model {_e(model.d_model)}, {_e(model.dtype)} on {_e(model.device)})<br>"
        f"<b>dataset</b> {_e(meta.dataset.name if meta.dataset else None)}<br>"
        f"<b>tokens</b> {_e(format(tok.n_tokens_evaluated or 0, ','))} evaluated of "
        f"{_e(format(tok.n_positions or 0, ','))} positions read ({_e(tok.n_batches)} batches x "
        f"{_e(tok.batch_size)} sequences x {_e(tok.seq_len)} tokens); BOS, PAD and EOS positions "
        f"excluded from every metric<br>"
        f"<b>forward</b> {_e(f'stopped after layer {stop}' if stop is not None else 'full forward pass')}<br>"
        f"<b>{_e(label)}</b>{_e(':' + rest)}<br>"
        f"<b>created</b> {_e(meta.created)}</p>\n"
    )


def _transcoders(metrics: Results) -> str:
    rows = []
    for name, m in metrics.items():
        tc = m.transcoder or TranscoderInfo()
        prefixes = list(tc.prefix_ends)
        site_cells = []
        for _, site in sides(m):
            _, norm = site_text(site)
            site_cells.append(
                f"<code>{_e(site.name)}</code><br>{_e(site.direction)} of <code>{_e(site.module)}</code>{_e(norm)}"
            )
        notes = "".join(f"<br>note: {_e(n)}" for n in (m.source.notes if m.source else ()))
        rows.append(
            f"<tr><td><b>{_e(name)}</b></td><td>{_e(tc.architecture)}</td>"
            f"<td class='num'>{_e(tc.d_in)} &rarr; {_e(tc.d_sae)} &rarr; {_e(tc.d_out)}</td>"
            f"<td>{_e(prefixes if len(prefixes) > 1 else '')}</td><td>{site_cells[0]}</td><td>{site_cells[1]}</td>"
            f"<td>{_e(source_text(m.source))}{notes}</td></tr>"
        )
    return (
        "<h2>Transcoders</h2>\n<table><tr><th>name</th><th>architecture</th><th>d_in &rarr; d_sae &rarr; d_out</th>"
        "<th>nested prefixes</th><th>input site</th><th>output site</th><th>source</th></tr>\n"
        + "\n".join(rows)
        + "</table>\n"
    )


def _cell(value: Any, spec: str, iv: Interval | None) -> str:
    ci = f"<br><span class='ci'>{_e(fmt_interval(iv, spec))}</span>" if iv else ""
    return f"<td class='num'>{_e(fmt(value, spec))}{ci}</td>"


def _seed_rows(metrics: Results) -> list[str]:
    names = list(metrics)
    seed_rows = {n: headline_fields(m) for n, m in metrics.items()}
    out = []
    for i, (field, _, spec, _) in enumerate(seed_rows[names[0]]):
        cells = []
        for n in names:
            value = seed_rows[n][i][1]
            if value is None and field == "absorption":
                cells.append(f"<td>{_e(absorption_value(metrics[n])[1])}</td>")
            else:
                info = next((x for x in METRICS if x.seed_field == field), None)
                cells.append(_cell(value, spec, interval_of(metrics[n], info)))
        out.append(f"<tr><td><b>{_e(field)}</b></td><td><code>{_e(field)}</code></td>{''.join(cells)}</tr>")
    return out


def _notes(metrics: Results) -> list[str]:
    notes = []
    for n, m in metrics.items():
        if m.downstream is None:
            notes.append(f"{n}: downstream: {downstream_note(m)}")
        if m.absorption is None:
            notes.append(f"{n}: absorption: {absorption_value(m)[1]}")
        elif absorption_caution(m):
            notes.append(f"{n}: absorption: caution: {absorption_caution(m)}")
        if m.sparsity is not None:
            notes.append(
                f"{n}: dead and dense latents are measured over {m.sparsity.n_tokens or 0:,} tokens; a latent may "
                "be alive on other text"
            )
    return notes


def _summary_table(metrics: Results) -> str:
    names = list(metrics)
    head = "".join(f"<th>{_e(n)}</th>" for n in names)
    out = [
        "<h2>Summary</h2>",
        "<p>Values over all evaluated tokens; the bracket under a value is its bootstrap interval over sequences "
        "(where one exists). The <i>field</i> column names where the number is in the metrics JSON; the first rows "
        "are the field names the seed code printed.</p>",
        f"<table><tr><th>metric</th><th>field</th>{head}</tr>",
        *_seed_rows(metrics),
    ]
    section = None
    for info in METRICS:
        if all(value_of(m, info) is None for m in metrics.values()):
            continue
        if info.section != section:
            section = info.section
            out.append(f"<tr><th colspan='{2 + len(names)}'>{_e(section)}</th></tr>")
        cells = "".join(_cell(value_of(metrics[n], info), info.spec, interval_of(metrics[n], info)) for n in names)
        out.append(f"<tr><td>{_e(info.label)}</td><td><code>{_e(info.key)}</code></td>{cells}</tr>")
    out.append("</table>")
    notes = _notes(metrics)
    if notes:
        out.append("<ul>" + "".join(f"<li>{_e(x)}</li>" for x in notes) + "</ul>")
    return "\n".join(out) + "\n"


def _verdicts(comparison: Comparison) -> str:
    rows = []
    for c in comparison.categories:
        cls = "win" if c.winner else "nodiff"
        pairs = "<br>".join(
            f"{_e(p.a)} &minus; {_e(p.b)}: {_e(fmt(p.difference, '.4g'))} "
            f"<span class='ci'>{_e(fmt_interval(p, '.4g'))}</span>{' <b>significant</b>' if p.significant else ''}"
            for p in c.pairs
            if p.low is not None
        )
        values = ", ".join(f"{n}: {fmt(v, '.4g')}" for n, v in c.values.items())
        rows.append(
            f"<tr><td><b>{_e(c.name)}</b><br><span class='ci'>{_e(c.why)}</span></td>"
            f"<td class='{cls}'>{_e(c.verdict)}</td><td>{_e(values)}</td><td>{pairs}</td>"
            f"<td><span class='ci'>{_e(c.how)}</span></td></tr>"
        )
    note = str(comparison.note if comparison.note is not None else "")
    return (
        "<h2>Verdicts</h2>\n<p>" + _e(note[:1].upper() + note[1:]) + ". Both transcoders saw exactly the same "
        "sequences, so the bootstrap resamples them together.</p>\n<table><tr><th>category</th><th>verdict</th><th>values</th>"
        "<th>paired difference [interval]</th><th>how decided</th></tr>\n" + "\n".join(rows) + "</table>\n"
    )


def _plots(metrics: Results) -> str:
    out = ["<h2>Plots</h2>"]
    for p in all_plots(metrics):
        data = base64.b64encode(p.png).decode("ascii")
        out.append(
            f"<figure><h3>{_e(p.title)}</h3><img alt='{_e(p.title)}' src='data:image/png;base64,{data}'>"
            f"<figcaption>{_e(p.caption)}</figcaption></figure>"
        )
    return "\n".join(out) + "\n"


def _prefix_tables(metrics: Results) -> str:
    out = []
    for name, m in metrics.items():
        rows = prefix_rows(m)
        if not rows:
            continue
        cols = [(k, label, spec) for k, label, spec in PREFIX_COLUMNS if any(r.value(k) is not None for r in rows)]
        head = "".join(f"<th>{_e(label)}</th>" for _, label, _ in cols)
        body = "".join(
            "<tr><td class='num'>"
            + _e(r.prefix_end)
            + "</td>"
            + "".join(_cell(r.value(k), spec, r.interval(k)) for k, _, spec in cols)
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


ABSORPTION_COLUMNS = (
    ("probe F1", "probe_f1", ".2f"),
    ("absorption", "mean_absorption_fraction", ".3f"),
    ("full", "full_absorption_rate", ".3f"),
    ("main latents", "main_latents", ""),
    ("cos(main, probe)", "main_cos", ".2f"),
    ("share of P by main", "main_share", ".2f"),
    ("share of P by all", "total_share", ".2f"),
)


def _absorption_cell(value: Any, spec: str) -> str:
    if isinstance(value, list):
        return (
            "<td>"
            + _e(", ".join(format(v, spec) if spec and isinstance(v, float) else str(v) for v in value))
            + "</td>"
        )
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return f"<td class='num'>{_e(format(value, spec) if spec else value)}</td>"
    return "<td>-</td>"


def _absorption_tables(metrics: Results) -> str:
    """Per-letter diagnostics: why each letter scores as it does (main latents, their cosine and share of P)."""
    out = []
    for name, m in metrics.items():
        per_letter = m.absorption.extra.get("per_letter") if m.absorption else None
        if not isinstance(per_letter, Mapping):
            continue
        scored = [c for c, e in per_letter.items() if isinstance(e, Mapping) and e.get("scored")]
        if not scored:
            continue
        head = "".join(f"<th>{_e(label)}</th>" for label, _, _ in ABSORPTION_COLUMNS)
        body = "".join(
            f"<tr><td>{_e(c)}</td>"
            + "".join(_absorption_cell(per_letter[c].get(key), spec) for _, key, spec in ABSORPTION_COLUMNS)
            + "</tr>"
            for c in scored
        )
        out.append(f"<h3>{_e(name)}</h3><table><tr><th>letter</th>{head}</tr>{body}</table>")
    if not out:
        return ""
    return (
        "<h2>Absorption by letter</h2>\n<p>For each scored letter: the probe's test F1, the mean absorption "
        "fraction and full-absorption rate over its probe-positive test words, the main latents (k-sparse probing), "
        "their cosine with the probe direction, and the share of the input's projection P onto the probe carried "
        "by the main latents and by all latents (the rest is reconstruction error). A letter with a low main share "
        "and a high all-latent share is one whose signal other latents carry: absorption.</p>\n" + "\n".join(out) + "\n"
    )


def _suggestions(metrics: Results) -> str:
    out = [
        "<h2>Suggestions</h2>",
        "<p>Rules applied to the measured metrics; every threshold is listed below with "
        "where it comes from. Each suggestion names the setting to change and why.</p>",
    ]
    for name, m in metrics.items():
        out.append(f"<h3>{_e(name)}</h3>")
        if is_pretrained(m):
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
                f"{_e(THRESHOLDS[s.rule])} ({_e(THRESHOLD_SOURCES[s.rule])})</span></div>"
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
        "resampled metric. Paired differences resample both transcoders with the same counts. Absorption is "
        "resampled over words instead (paired: the same draws for both transcoders). Dead latents have no "
        "per-sequence form and no interval; decoder redundancy depends on the weights only.</p>"
    )
    rows = "".join(
        f"<tr><td><code>{_e(k)}</code></td><td class='num'>{_e(v)}</td><td>{_e(THRESHOLD_SOURCES[k])}</td></tr>"
        for k, v in THRESHOLDS.items()
    )
    out.append(
        f"<h3>Suggestion thresholds</h3><table><tr><th>rule</th><th>threshold</th><th>source</th></tr>{rows}</table>"
    )
    return "\n".join(out) + "\n"


def _latent_links(metrics: Results) -> str:
    """Links into each transcoder's latents.html (present only when the run collected latents)."""
    blocks = []
    for name, m in metrics.items():
        lat = m.extra.get("latents")
        if not isinstance(lat, Mapping) or not lat.get("page"):
            continue
        page = str(lat["page"])

        def links(ids: Any, page: str = page) -> str:
            ids = [int(i) for i in ids or []]
            return ", ".join(f"<a href='{_e(page)}#latent={i}'>{i}</a>" for i in ids) or "none"

        items = [
            f"<a href='{_e(page)}'>all collected latents</a> ({_e(lat.get('collected_latents'))})",
            f"dead (never fired, {_e(lat.get('n_dead'))}): {links(lat.get('dead', [])[:50])}",
            f"dense (density above {_e(lat.get('dense_threshold'))}): {links(lat.get('dense', [])[:50])}",
        ]
        per_letter = m.absorption.extra.get("per_letter") if m.absorption else None
        for letter, entry in sorted((per_letter or {}).items()):
            if not isinstance(entry, Mapping):
                continue
            absorbing = sorted(
                {int(i) for w in entry.get("absorbed_words") or [] for i in (w.get("absorbing_latents") or [])}
            )
            items.append(
                f"absorption letter {_e(letter)}: main {links(entry.get('main_latents'))}; "
                f"absorbing {links(absorbing[:30])}"
            )
        for match in lat.get("matches") or []:
            other, cpage = match.get("page", ""), str(match.get("page", ""))
            items.append(
                f"matches to {_e(match.get('other'))} (<a href='{_e(other)}'>side by side</a>): best "
                f"{links(match.get('best'), cpage)}; worst {links(match.get('worst'), cpage)}; "
                f"{_e(match.get('n_unmatched_a'))} unmatched"
            )
        blocks.append(f"<h3>{_e(name)}</h3><ul>" + "".join(f"<li>{i}</li>" for i in items) + "</ul>")
    return "<h2>Latents</h2>\n" + "\n".join(blocks) + "\n" if blocks else ""


def render_report(
    meta: RunMeta | Mapping[str, Any],
    metrics: Mapping[str, TranscoderResult | Mapping[str, Any]],
    comparison: Comparison | Mapping[str, Any] | None = None,
) -> str:
    """The whole page as a string (deterministic for the same inputs)."""
    meta, results = as_meta(meta), as_results(metrics)
    if comparison is None and len(results) > 1:
        comparison = comparison_record(meta, results)
    if comparison is not None and not isinstance(comparison, Comparison):
        comparison = Comparison.from_json(dict(comparison), "comparison")
    versions = ", ".join(f"{k} {v}" for k, v in meta.versions.items())
    body = (
        _header(meta, results, comparison)
        + _transcoders(results)
        + (_verdicts(comparison) if comparison else "")
        + _summary_table(results)
        + _plots(results)
        + _prefix_tables(results)
        + _absorption_tables(results)
        + _suggestions(results)
        + _latent_links(results)
        + _explanations()
        + f"<p class='meta'>versions: {_e(versions)}<br>Rebuild this page from the JSON files with "
        "<code>transcoderbench report DIR</code>.</p>"
    )
    title = ("comparison: " if comparison else "evaluation: ") + ", ".join(results)
    return (
        f"<!DOCTYPE html>\n<html lang='en'>\n<head>\n<meta charset='utf-8'>\n<title>transcoderbench {_e(title)}"
        f"</title>\n<style>{CSS}</style>\n</head>\n<body>\n<main>\n{body}</main>\n</body>\n</html>\n"
    )


def build_report(directory: str | Path) -> str:
    """The report of an evaluate/compare output directory, from its JSON files alone."""
    meta, metrics, comparison = load_records(directory)
    return render_report(meta, metrics, comparison)


def write_report(directory: str | Path) -> Path:
    """Write ``report.html`` into ``directory`` (atomically) from the JSON files there; returns its path."""
    text = build_report(directory)
    return write_files(directory, {REPORT_NAME: text})[0]


def add_report(
    files: dict[str, Any],
    meta: Mapping[str, Any],
    metrics: Mapping[str, Mapping[str, Any]],
    comparison: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """``files`` plus report.html, rendered from exactly what the JSON files will hold.

    So the page can be written together with the JSON (all or nothing, by ``write_files``), and
    ``transcoderbench report DIR`` rebuilds the same page from those files.
    """
    data = json.loads(json.dumps(json_ready({"meta": meta, "metrics": metrics, "comparison": comparison})))
    return {**files, REPORT_NAME: render_report(data["meta"], data["metrics"], data["comparison"])}

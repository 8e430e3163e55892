"""``OUT/cohort.html``: one self-contained page over the cohort's table: the counts, the failed cases
and their errors, box plots of Dice, HD95 and volumes per region, and the worst cases' overviews."""

from __future__ import annotations

import base64
import html
import io
import math
from pathlib import Path

from ..io import atomic_path

WORST = 5  # cases shown with their overview


def write_report(rows: list[dict], out: Path) -> Path:
    parts = [f"<h1>Cohort: {html.escape(out.name)}</h1>", _counts(rows), _failures(rows)]
    for title, prefix in (("Dice", "dice_"), ("HD95 (mm)", "hd95_"), ("Volume (ml)", "ml_")):
        figure = _boxplot(rows, prefix, title)
        if figure:
            parts.append(f"<h2>{title}</h2>{figure}")
    parts.append(_worst(rows, out))
    page = ("<!doctype html><meta charset='utf-8'><title>brainbarriers cohort</title>"
            "<style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}"
            "td,th{border:1px solid #ccc;padding:2px 6px;text-align:left}</style>"
            + "\n".join(p for p in parts if p))
    path = out / "cohort.html"
    with atomic_path(path) as tmp:
        tmp.write_text(page, encoding="utf-8")
    return path


def _counts(rows: list[dict]) -> str:
    counts: dict[str, int] = {}
    for row in rows:
        counts[row["status"]] = counts.get(row["status"], 0) + 1
    ran = [r["seconds"] for r in rows if r.get("ran") and r.get("seconds")]
    timing = (f"; the {len(ran)} cases run now took {sum(ran) / len(ran):.1f} s each on average"
              if ran else "")
    return "<p>" + ", ".join(f"{n} {html.escape(s)}" for s, n in counts.items()) + timing + "</p>"


def _failures(rows: list[dict]) -> str:
    failed = [r for r in rows if r["status"] == "failed"]
    if not failed:
        return ""
    lines = "".join(f"<tr><td>{html.escape(r['case'])}</td><td>{html.escape(r.get('error', ''))}"
                    "</td></tr>" for r in failed)
    return f"<h2>Failed cases</h2><table><tr><th>case</th><th>error</th></tr>{lines}</table>"


def _values(rows: list[dict], column: str) -> list[float]:
    values = []
    for row in rows:
        value = row.get(column)
        if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            values.append(float(value))
    return values


def _boxplot(rows: list[dict], prefix: str, title: str) -> str:
    columns = []
    for row in rows:
        columns += [c for c in row if c.startswith(prefix) and c not in columns]
    data = [(c[len(prefix):], _values(rows, c)) for c in columns]
    data = [(name, v) for name, v in data if v]
    if not data:
        return ""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(max(4.0, 0.8 * len(data) + 1.5), 3.2))
    ax.boxplot([v for _, v in data], showmeans=True)
    ax.set_xticks(range(1, len(data) + 1), [n for n, _ in data], rotation=30, ha="right")
    ax.set_ylabel(title)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=80)
    plt.close(fig)
    return _img(buffer.getvalue())


def _worst(rows: list[dict], out: Path) -> str:
    """The lowest whole-tumour Dice when there are truths, else the largest number of warnings."""
    done = [r for r in rows if r["status"] == "done"]
    if any("dice_WT" in r for r in done):
        ranked = sorted((r for r in done if "dice_WT" in r), key=lambda r: r["dice_WT"])
        label = "lowest whole-tumour Dice"
    else:
        ranked = sorted((r for r in done if r.get("n_warnings")), key=lambda r: -r["n_warnings"])
        label = "most warnings"
    parts = []
    for row in ranked[:WORST]:
        picture = out / row["case"] / "overview.png"
        if picture.is_file():
            figures = ", ".join(f"{k} {row[k]}" for k in row
                                if k.startswith("dice_") or k == "n_warnings")
            parts.append(f"<h3>{html.escape(row['case'])}: {html.escape(figures)}</h3>"
                         + _img(picture.read_bytes()))
    return f"<h2>Worst cases ({label})</h2>" + "".join(parts) if parts else ""


def _img(png: bytes) -> str:
    return f"<img src='data:image/png;base64,{base64.b64encode(png).decode()}'>"

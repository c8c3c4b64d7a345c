"""One report layout for every reproduction: the paper's numbers beside ours.

A :class:`ReproductionReport` holds the findings, the setup (what we follow
and where we differ from the paper) and sections of tables and figures. It
writes ``report.md``, ``report.html`` (figures embedded), ``figures/*.png``,
one CSV per table under ``tables/`` and the resolved ``config.json``, all
atomically.
"""

from __future__ import annotations

import base64
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jinja2
import matplotlib.pyplot as plt
import pandas as pd

from .._io import atomic_write_bytes, atomic_write_text
from ..report.figures import figure_png

__all__ = ["ReproductionReport", "Section"]


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:60] or "item"


@dataclass
class Section:
    """A heading, paragraphs, tables ``(caption, frame)`` and figures ``(caption, figure)``.

    Table cells are written as they are: format numbers (with their
    intervals) before adding a table; the CSV keeps the same cells.
    """

    heading: str
    text: list[str] = field(default_factory=list)
    tables: list[tuple[str, pd.DataFrame]] = field(default_factory=list)
    figures: list[tuple[str, plt.Figure]] = field(default_factory=list)


@dataclass
class ReproductionReport:
    """The report of one reproduction (see the module docstring for what it writes)."""

    title: str
    citation: str
    findings: list[str]
    setup: list[str]
    differences: list[str]
    sections: list[Section] = field(default_factory=list)
    data: dict[str, pd.DataFrame] = field(default_factory=dict)  # raw results, CSV only

    def write(self, out_dir: str | Path, *, config: dict[str, Any] | None = None,
              versions: dict[str, str] | None = None) -> Path:
        """Write the report into ``out_dir``; returns the path of ``report.html``.

        ``config`` (the resolved config) and ``versions`` (library versions) are
        written as ``config.json`` / ``versions.json`` and summarised at the end
        of the report, so a reader knows how it was made.
        """
        out = Path(out_dir)
        if config is not None:
            atomic_write_text(out / "config.json", json.dumps(config, indent=2, default=str))
        if versions is not None:
            atomic_write_text(out / "versions.json", json.dumps(versions, indent=2))
        provenance = _provenance(config, versions)
        for name, frame in self.data.items():
            atomic_write_text(out / f"{name}.csv", frame.to_csv(index=False, na_rep="NaN"))
        md = [f"# {self.title}", "", f"Reproducing: {self.citation}", "", "## Findings", ""]
        md += [f"- {s}" for s in self.findings]
        md += ["", "## Setup: what we follow and where we differ", ""]
        md += [f"- {s}" for s in self.setup]
        md += [f"- **Differs:** {s}" for s in self.differences]
        html_sections = []
        for i, section in enumerate(self.sections):
            md += ["", f"## {section.heading}", ""]
            for paragraph in section.text:
                md += [paragraph, ""]
            tables = []
            for j, (caption, frame) in enumerate(section.tables):
                stem = f"tables/{i + 1:02d}-{j + 1}-{_slug(caption)}"
                atomic_write_text(out / f"{stem}.csv", frame.to_csv(index=False, na_rep="NaN"))
                md += [f"**{caption}** ([CSV]({stem}.csv))", "",
                       _markdown(frame), ""]
                tables.append({"caption": caption, "csv": f"{stem}.csv",
                               "columns": [str(c) for c in frame.columns],
                               "rows": [[_cell(v) for v in row]
                                        for row in frame.itertuples(index=False)]})
            figures = []
            for j, (caption, fig) in enumerate(section.figures):
                png = figure_png(fig)
                plt.close(fig)
                name = f"figures/{i + 1:02d}-{j + 1}-{_slug(caption)}.png"
                atomic_write_bytes(out / name, png)
                md += [f"![{caption}]({name})", "", f"*{caption}*", ""]
                figures.append({"caption": caption,
                                "src": "data:image/png;base64," + base64.b64encode(png).decode()})
            html_sections.append({"heading": section.heading, "text": section.text,
                                  "tables": tables, "figures": figures})
        if provenance:
            md += ["", "---", "", provenance]
        atomic_write_text(out / "report.md", "\n".join(md).rstrip() + "\n")
        env = jinja2.Environment(loader=jinja2.PackageLoader("xprune.report", "templates"),
                                 autoescape=jinja2.select_autoescape(["html", "j2"]),
                                 undefined=jinja2.StrictUndefined)
        html = env.get_template("reproduction.html.j2").render(
            title=self.title, citation=self.citation, findings=self.findings,
            setup=self.setup, differences=self.differences, sections=html_sections,
            provenance=provenance)
        return atomic_write_text(out / "report.html", html)


def _provenance(config: dict[str, Any] | None, versions: dict[str, str] | None) -> str:
    """One line: the run's reproduction, seed, device, threads and library versions."""
    parts = []
    if config is not None:
        parts.append(f"Made by `xprune run` of reproduction {config.get('reproduction')} "
                     f"(seed {config.get('seed')}, device {config.get('device')}, "
                     f"{config.get('threads')} CPU thread(s); config.json has every parameter)")
    if versions is not None:
        parts.append("with " + ", ".join(f"{k} {v}" for k, v in versions.items()
                                         if k not in ("platform", "code"))
                     + (f", source digest {versions['code']}" if "code" in versions else ""))
    return " ".join(parts) + ("." if parts else "")


def _markdown(frame: pd.DataFrame) -> str:
    """A Markdown table whose cells may contain ``|``, HTML or line breaks (escaped by
    :func:`xprune.report.render.md_cell`, so columns stay aligned and tags inert)."""
    from ..report.render import md_cell

    escaped = frame.rename(columns=md_cell).map(lambda v: md_cell(_cell(v)))
    return escaped.to_markdown(index=False, disable_numparse=True)


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return "—" if value != value else f"{value:.4g}"
    return str(value)

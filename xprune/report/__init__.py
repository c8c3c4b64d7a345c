"""Reports of a run folder: Markdown, self-contained HTML, CSV summaries and figures."""

from .render import render_report
from .tables import metric_summary, what_changed

__all__ = ["metric_summary", "render_report", "what_changed"]

"""``manage.py evaluate``: run an evaluation dataset through the server and report on it.

- :mod:`retrieval.evaluation.runner`: the throw-away catalog, the queries and the pairs run
  through the services, and the summary of what they measured.
- :mod:`retrieval.evaluation.report`: the summary as text, markdown and plots.

Dataset loading and the metrics are framework-free: :mod:`retrieval.vision.datasets` and
:mod:`retrieval.vision.metrics`.
"""

from retrieval.evaluation.report import render_markdown, render_text, write_plots
from retrieval.evaluation.runner import Evaluation, evaluate
from retrieval.vision.datasets import load_datasets

__all__ = ["Evaluation", "evaluate", "load_datasets", "render_markdown", "render_text", "write_plots"]

"""The local web explorer over a feature store: an index with search, sorting and live text,
a feature page per latent, JSON under ``/api/``, and a static HTML export."""

from saelab.explore.export import export_html
from saelab.explore.live import LiveEncoder
from saelab.explore.server import ExploreApp, ExploreServer

__all__ = ["ExploreApp", "ExploreServer", "LiveEncoder", "export_html"]

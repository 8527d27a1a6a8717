"""The operator dashboard (issue 12), served by ``stepq api`` and ``stepq dev`` under ``/ui``:
server-rendered pages (Starlette + Jinja2) made live with htmx, shipped in the package."""

from .app import create_dashboard
from .auth import DashboardAuth

__all__ = ["DashboardAuth", "create_dashboard"]

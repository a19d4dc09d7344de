"""The web dashboard under /ui/: jobs, one job's live curves and cost report, the plan explorer.

Server-rendered Jinja2 pages (``api.ui.routes``), the data they show (``api.ui.views``), and
static files with no build step (``static/``: the page scripts and a vendored Chart.js, see
``static/vendor/README.md``). ``install(app)`` adds it all to the FastAPI app.
"""

from api.ui.routes import install

__all__ = ["install"]

"""Calls for proposals in the browser, one module per role: the applicant (applying, the draft editor), the
reviewer, the call manager (the review pipeline, the dashboard, the CSV) and the administrator (creating
calls). ``grants.queries`` assembles what the pages show; ``grants.services`` decides and owns each
transaction, rolling back whatever a refused step had begun.

The views turn the services' named refusals into a page that says why (4xx), never an error 500:
``InvalidInput`` shows next to the fields (422), a ``Conflict`` (an illegal step, an ineligible organisation, a
conflict of interest, a spent budget or capacity) above the forms (409).
"""

from portal.grants.views import admin, applicant, manager, outputs, reviewer
from portal.grants.views.common import bp

__all__ = ["admin", "applicant", "bp", "manager", "outputs", "reviewer"]

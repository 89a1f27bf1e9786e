"""The product document's screens as server-rendered pages, for end users in a browser.

Mounted at ``/`` by :func:`twofa.api.create_app`; the pages call the service layer directly and
never use the service token (that is for backends calling ``/v1``).
"""

from twofa.web.pages import router

__all__ = ["router"]

"""The product document's screens as server-rendered pages, for end users in a browser.

Mounted at ``/`` by :func:`twofa.api.create_app`; the pages call the service layer directly and
never use the service token (that is for backends calling ``/v1``). ``core`` holds the pages'
one router and what every page shares; importing ``login`` and ``account_settings`` here adds
their routes to it, so any import of this package sees every page.
"""

from twofa.web import account_settings, login
from twofa.web.core import router

__all__ = ["account_settings", "login", "router"]

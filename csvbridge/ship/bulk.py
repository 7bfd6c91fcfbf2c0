"""Former home of the bulk API code, kept so existing imports work during the merge.

The code now lives by concept in `csvbridge.ship` (client, pacer, progress, results,
shipper); import from the package.  This module only re-exports and will be removed.
"""

from csvbridge.ship import *  # noqa: F403
from csvbridge.ship import __all__  # noqa: F401

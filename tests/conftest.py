"""Shared pytest configuration: fixtures live in tests/plugins/, one module per kind of server.

Property tests run under a hypothesis profile chosen by ``HYPOTHESIS_PROFILE``:

- ``ci`` (the default, and what `.ci/run` uses): a fixed example budget, derandomised
  (the same examples every run, so a red CI is reproducible), a per-example deadline
  and no shrinking marathon: bounded in time.
- ``dev``: random examples (hypothesis prints the seed and a reproduction blob on
  failure), a larger budget.
- ``deep``: for a long local hunt, e.g. ``HYPOTHESIS_PROFILE=deep pytest tests/test_lane.py``.
"""

import os
from datetime import timedelta

from hypothesis import HealthCheck, Phase, settings

_SLOW = [HealthCheck.too_slow, HealthCheck.data_too_large]
settings.register_profile(
    "ci",
    max_examples=40,
    derandomize=True,
    deadline=timedelta(seconds=20),
    print_blob=True,
    suppress_health_check=_SLOW,
    phases=[Phase.explicit, Phase.reuse, Phase.generate, Phase.target],  # no shrinking
)
settings.register_profile(
    "dev", max_examples=100, deadline=None, print_blob=True, suppress_health_check=_SLOW
)
settings.register_profile(
    "deep", max_examples=2000, deadline=None, print_blob=True, suppress_health_check=_SLOW
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

pytest_plugins = ["tests.plugins.api", "tests.plugins.servers", "tests.plugins.postgres"]

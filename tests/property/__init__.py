"""Property-based tests (hypothesis) of the parsers and header builders that read attacker text.

The "property" profile is what `make test` runs: modest example counts, and a per-example deadline
generous enough for a busy machine yet far below what a quadratic or looping parser takes.
tests/fuzz/run.py runs the same tests with its own profile and many more examples.
"""

from datetime import timedelta

from hypothesis import HealthCheck, settings

settings.register_profile(
    "property",
    max_examples=200,
    deadline=timedelta(seconds=5),
    suppress_health_check=[HealthCheck.too_slow],
)
settings.load_profile("property")

import os

from hypothesis import HealthCheck, settings

pytest_plugins = ["tests.qemu_fixtures"]

# Profiles: `quick` for development, `ci` (default under CI=true), `fuzz` for long campaigns.
settings.register_profile("quick", max_examples=30, deadline=None)
settings.register_profile("ci", max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("fuzz", max_examples=20000, deadline=None, suppress_health_check=list(HealthCheck))
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE") or ("ci" if os.environ.get("CI") else "quick"))

import os

from hypothesis import settings

import conformance.pytest_plugin  # noqa: F401  (registers the quick / ci / fuzz hypothesis profiles)

pytest_plugins = ["tests.qemu_fixtures"]

# The suite's default profile: `quick` for development, `ci` under CI=true (HYPOTHESIS_PROFILE,
# or the plugin's --migconform-profile, chooses another).
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE") or ("ci" if os.environ.get("CI") else "quick"))

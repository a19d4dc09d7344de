"""The worker tests share the job-runtime fixtures (tiny job specs, fast-progress settings)."""

from tests.runtime.conftest import TINY, tiny_spec, wsettings

__all__ = ["TINY", "tiny_spec", "wsettings"]

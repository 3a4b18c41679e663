"""The one shape of a slide id, used wherever one arrives: the command line, the API, paths."""

from __future__ import annotations

import re

SLIDE_ID_REGEX = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
SLIDE_ID_PATTERN = re.compile(SLIDE_ID_REGEX)

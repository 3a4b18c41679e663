"""The one shape of a slide id, used wherever one arrives: the command line, the API, paths."""

from __future__ import annotations

import re

SLIDE_ID_CHARACTERS = r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}"  # to embed in a larger pattern (a URL path)
SLIDE_ID_REGEX = rf"^{SLIDE_ID_CHARACTERS}$"
SLIDE_ID_PATTERN = re.compile(SLIDE_ID_REGEX)

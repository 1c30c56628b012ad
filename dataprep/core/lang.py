"""Language codes: the one owner of parsing and comparing language tags.

polyclap keeps base ISO 639 codes (``zh-CN`` -> ``zh``, ``pt_BR`` -> ``pt``) in samples; readers,
text stages, augmenters and the evaluation harness compare tags through these two functions.
"""

from __future__ import annotations

import re


def base_lang(code: str | None) -> str | None:
    """``zh-CN`` -> ``zh``, ``pt_BR`` -> ``pt``, ``""``/None -> None (codes stay lower case)."""
    if not code or not str(code).strip():
        return None
    return re.split(r"[-_]", str(code).strip())[0].lower() or None


def same_language(a: str | None, b: str | None) -> bool:
    """Compare tags by their base code (``zh-CN`` == ``zh``); an unknown side never differs."""
    if not base_lang(a) or not base_lang(b):
        return True
    return base_lang(a) == base_lang(b)

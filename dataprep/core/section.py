"""The base of every typed config section and the config error (re-exported by ``config``).

Its own module so that a section can live outside ``config.py`` (``loader_config.py``) without
an import cycle; import both names from :mod:`dataprep.core.config`.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class ConfigError(ValueError):
    """A configuration problem, with a message a user can act on."""


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

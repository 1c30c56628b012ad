"""polyclap data preparation library: readers, normalization, filters, features, shards.

Library code only: nothing here starts Ray except ``dataprep.build.executor``.
"""

__version__ = "0.1.0"

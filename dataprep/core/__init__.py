"""Layer 1 of polyclap: the shared contracts and I/O (see ARCHITECTURE.md).

Sample schema, typed configuration and its loader, the feature config and its fingerprint,
tar/shard I/O and atomic writes. Nothing here imports another polyclap layer.
"""

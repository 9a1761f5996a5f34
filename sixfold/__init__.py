"""Sixfold: an Aurora-style distributed SQL database runtime."""

__version__ = "0.1.0"


def connect(address: str, autocommit: bool = False, timeout_s: float = 30.0, replica_read_consistency: str = ""):
    """DB-API 2.0 connection to a compute node; see sixfold.dbapi."""
    from sixfold.dbapi import connect as _connect

    return _connect(address, autocommit=autocommit, timeout_s=timeout_s,
                    replica_read_consistency=replica_read_consistency)

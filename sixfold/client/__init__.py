"""Clients of the storage nodes: the quorum client used by compute nodes."""

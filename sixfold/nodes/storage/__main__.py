"""`python -m sixfold.nodes.storage ...` runs a storage node (same flags as `sixfold storage-node`)."""

from sixfold.nodes.storage.main import storage_node

storage_node(prog_name="python -m sixfold.nodes.storage")

"""`python -m sixfold.globaldb ...` runs a secondary region's replicator."""

from sixfold.globaldb.main import replicator

replicator(prog_name="python -m sixfold.globaldb")

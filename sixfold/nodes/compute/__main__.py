from sixfold.nodes.compute.main import compute_node

compute_node(prog_name="sixfold compute-node")

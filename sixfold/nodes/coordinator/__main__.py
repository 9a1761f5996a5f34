from sixfold.nodes.coordinator.main import coordinator

coordinator(prog_name="sixfold coordinator")

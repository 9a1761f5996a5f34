"""The PostgreSQL wire front end of a compute node (protocol v3); see DESIGN.md here."""

"""The Ray-free parts of the jobs: sources, planning rows, batch shapes, switch settings."""

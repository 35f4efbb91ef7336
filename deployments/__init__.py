"""The Serve layer: a module per deployment, the graph builder, the ingress's routes and flows."""

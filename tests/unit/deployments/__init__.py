"""The HTTP layer over stand-in handles: routes, flows, error mapping, envelope shapes."""

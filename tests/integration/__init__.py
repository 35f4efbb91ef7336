"""On a real Ray cluster: the Serve app over HTTP, the CLI, the README's commands."""

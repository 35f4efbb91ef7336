"""The `image-search` command line: on top of the engine, the Serve app and the jobs."""

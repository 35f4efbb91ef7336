"""The HTTP API on MariaDB + S3 + a Milvus server, faults included, and the compose file."""

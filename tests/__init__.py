"""Tests: unit (no Ray), integration (real Ray), servers (real MariaDB, S3, Milvus), e2e."""

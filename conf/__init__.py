"""ftlight configuration groups (YAML)."""

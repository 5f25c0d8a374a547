"""The KV / geometry core: dtypes, KV-cache specs per layer kind, layouts over named mesh axes,
per-device geometry (weights and pages), paging arithmetic and the sharded-array table."""

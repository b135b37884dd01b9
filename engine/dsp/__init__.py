"""The DSP document store: a registry (metadata rows) and a repository (content-addressed blobs)."""

"""The decision path: the pipeline and its phases, one module each."""

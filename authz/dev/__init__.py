"""Demo and development helpers, outside the runtime import graph."""

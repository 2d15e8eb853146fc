"""Build stages, one module each, run in order by `builder.build`."""

"""hardhost builder: spec model, build stages, qemu boot and the CLI."""

"""The policy sources people edit, shipped inside the package: `seccomp` (the default
profile's policy and the syscall table) and `apparmor` (the profile templates). In the
repository they live at the top, as `seccomp/` and `apparmor/`; pyproject.toml maps them here.
Read them with `importlib.resources`, never through a path relative to a source file."""

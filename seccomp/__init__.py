"""Policy sources for seccomp, shipped as package data (hardhost.policy.seccomp)."""

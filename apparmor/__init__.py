"""AppArmor profile templates, shipped as package data (hardhost.policy.apparmor)."""

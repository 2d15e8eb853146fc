# Attest one host with hardhost before anything else depends on it. The data source runs
# `hardhost terraform-attest` on every plan and refresh; it never reboots the host.

terraform {
  required_version = ">= 1.2"
  required_providers {
    external = {
      source  = "hashicorp/external"
      version = ">= 2.3"
    }
  }
}

data "external" "attestation" {
  program = [var.hardhost, "terraform-attest"]

  query = {
    host        = var.host
    port        = tostring(var.port)
    user        = var.user
    manifest    = var.manifest
    trust_key   = var.trust_key
    known_hosts = var.known_hosts
    identity    = var.identity
    timeout     = tostring(var.timeout)
  }

  lifecycle {
    postcondition {
      condition     = self.result.status == "pass"
      error_message = "hardhost: ${var.host} drifted from its manifest: ${self.result.findings}"
    }
  }
}

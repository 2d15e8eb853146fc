output "status" {
  description = "pass or drift."
  value       = data.external.attestation.result.status
}

output "boot_id" {
  description = "The boot the evidence came from."
  value       = data.external.attestation.result.boot_id
}

output "manifest_digest" {
  description = "sha256 of the manifest the host was checked against."
  value       = data.external.attestation.result.manifest_digest
}

output "findings" {
  description = "Each differing fact: id, severity, expected and observed."
  value       = jsondecode(data.external.attestation.result.findings)
}

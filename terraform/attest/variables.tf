variable "hardhost" {
  description = "Path to the hardhost command."
  type        = string
  default     = "hardhost"
}

variable "host" {
  description = "Address of the host to attest."
  type        = string
}

variable "port" {
  description = "SSH port of the host."
  type        = number
  default     = 22
}

variable "user" {
  description = "SSH user that runs the evidence script."
  type        = string
  default     = "root"
}

variable "manifest" {
  description = "The image's signed manifest.dsse.json."
  type        = string
}

variable "trust_key" {
  description = "Trusted manifest signing key (PEM), or a folder of *.pub keys."
  type        = string
}

variable "known_hosts" {
  description = "known_hosts file holding the host's provisioned SSH key."
  type        = string
}

variable "identity" {
  description = "Private key to log in with."
  type        = string
}

variable "timeout" {
  description = "Seconds allowed for connecting and for collecting evidence."
  type        = number
  default     = 30
}

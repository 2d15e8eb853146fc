# hardhost: `make demo` and `make test` each do all the set-up on a fresh Debian 12 machine.
# Run them as root (or with sudo): building images needs mmdebstrap, chroot and device nodes.

SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
CACHE := $(HOME)/.cache/hardhost
DEMO_KEY := $(CACHE)/keys/id_ed25519
SIGNING_KEY := $(CACHE)/keys/signing.key
DEMO_OUT := out
DEMO_NAME := demo
DEMO_PORT ?= 2222
DEMO_VM := $(HOME)/.local/state/hardhost/vms/$(DEMO_NAME)
PYTEST_ARGS ?=

APT_PACKAGES := mmdebstrap erofs-utils squashfs-tools cryptsetup-bin qemu-system-x86 \
	e2fsprogs util-linux tar apparmor secilc runc strace openssh-server openssh-client \
	python3 python3-venv ca-certificates swtpm swtpm-tools tpm2-tools busybox-static \
	kmod binutils systemd-boot-efi dosfstools mtools sbsigntool ovmf openssl \
	pesign osslsigncode golang-github-docker-docker-dev fdisk qemu-utils chromium \
	postgresql-15 podman skopeo buildah docker-registry gnupg runsc

.PHONY: help deps venv keys lint unit test demo demo-stop clean

help:
	@echo "make demo   install what is needed, build images/container-host.toml, boot it, attest it"
	@echo "make test   as root: install what is needed, lint, and run every test, e2e included"
	@echo "            (loopback sshd, runc, swtpm, and image builds and boots under qemu)"
	@echo "make unit   lint and the tests not marked e2e: no root, no qemu, no sshd, swtpm or runc;"
	@echo "            they read the repository and Debian packages (make deps)"
	@echo "            (the e2e tests that boot nothing alone: make test PYTEST_ARGS='-m system')"

root-check:
	@if [ "$$(id -u)" -ne 0 ]; then echo "run as root, e.g. sudo make $(MAKECMDGOALS)"; exit 2; fi

deps: root-check
	@missing=""; for p in $(APT_PACKAGES); do \
		dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | grep -q '^install ok installed' \
			|| missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
		echo "installing:$$missing"; \
		apt-get update -q && DEBIAN_FRONTEND=noninteractive \
			apt-get install -y -q --no-install-recommends $$missing; \
	fi

$(BIN)/hardhost: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test]'
	touch $@

venv: $(BIN)/hardhost

$(DEMO_KEY):
	mkdir -p -m 0700 $(dir $@)
	ssh-keygen -q -t ed25519 -N '' -C hardhost-demo -f $@

$(SIGNING_KEY): | $(BIN)/hardhost
	mkdir -p -m 0700 $(dir $@)
	$(BIN)/hardhost keygen --out $(dir $@)

keys: $(DEMO_KEY) $(SIGNING_KEY)

lint: venv
	$(BIN)/ruff check .
	$(BIN)/mypy
	$(BIN)/lint-imports

unit: lint
	$(BIN)/pytest -m "not e2e" $(PYTEST_ARGS)

test: deps venv lint
	$(BIN)/pytest $(PYTEST_ARGS)

demo: deps venv keys
	$(BIN)/hardhost build images/container-host.toml -o $(DEMO_OUT) --force \
		--authorized-key $(DEMO_KEY).pub --key $(SIGNING_KEY)
	$(BIN)/hardhost manifest verify $(DEMO_OUT)/container-host/manifest.dsse.json \
		--trust-key $(CACHE)/keys/signing.pub
	$(BIN)/hardhost vm stop $(DEMO_NAME)
	$(BIN)/hardhost vm start $(DEMO_OUT)/container-host --name $(DEMO_NAME) \
		--ssh-port $(DEMO_PORT) --tpm --trust-key $(CACHE)/keys/signing.pub
	$(BIN)/hardhost evidence root@127.0.0.1:$(DEMO_PORT) --identity $(DEMO_KEY) \
		--known-hosts $(DEMO_VM)/known_hosts
	$(BIN)/hardhost attest root@127.0.0.1:$(DEMO_PORT) --identity $(DEMO_KEY) \
		--known-hosts $(DEMO_VM)/known_hosts \
		--manifest $(DEMO_OUT)/container-host/manifest.dsse.json \
		--trust-key $(CACHE)/keys/signing.pub \
		--tpm --tpm-ca $(DEMO_VM)/tpm/ca/bundle.pem --ak-registry $(DEMO_VM)/aks.json
	@echo
	@echo "The demo host is running. Log in:"
	@echo "  ssh -i $(DEMO_KEY) -p $(DEMO_PORT) -o UserKnownHostsFile=$(DEMO_VM)/known_hosts root@127.0.0.1"
	@echo "Stop it: make demo-stop"

demo-stop: venv
	$(BIN)/hardhost vm stop $(DEMO_NAME)

clean:
	rm -rf $(DEMO_OUT) .mypy_cache .ruff_cache .pytest_cache

# Two entry points: `make demo` and `make test`. Each creates .venv and installs exactly the versions in
# requirements.lock (with their hashes), then checks that every compiled dependency loads (`streamtag doctor`),
# and installs the few Debian packages the live tests use. `make lock` refreshes the lock.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
LOCK := requirements.lock
UV := uv==0.13.9
APT_PACKAGES := libportaudio2 pulseaudio pulseaudio-utils tmux gcc g++

.PHONY: setup system-deps demo test bench lock

# The virtual environment is made afresh whenever the lock or pyproject.toml changes, so it holds what the
# lock names and nothing else. The project itself is installed without dependencies and without build
# isolation: its build backend (setuptools) comes from the lock too.
$(STAMP): pyproject.toml $(LOCK)
	$(PY) -m venv --clear $(VENV)
	$(BIN)/python -m pip install -q --require-hashes -r $(LOCK)
	$(BIN)/python -m pip install -q --no-deps --no-build-isolation -e .
	$(BIN)/streamtag doctor
	touch $(STAMP)

setup: $(STAMP)

# Resolve pyproject.toml's ranges (with the dev and train extras) to the newest versions that fit, for every
# platform and Python >= 3.10, with hashes; then `make test` installs and tests exactly that.
lock:
	$(PY) -m venv $(VENV)-lock
	$(VENV)-lock/bin/python -m pip install -q '$(UV)'
	$(VENV)-lock/bin/uv pip compile pyproject.toml --extra dev --universal --generate-hashes --python-version 3.10 \
	  --quiet --custom-compile-command 'make lock' -o $(LOCK)

# PortAudio for sounddevice; PulseAudio (a null sink) for the live-capture test; tmux for the dashboard test;
# a C and C++ compiler for the frontend kernel's one-off build ahead of time (without them it runs just in time).
system-deps:
	@missing=$$(for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -n "$$missing" ]; then \
	  if ! command -v apt-get >/dev/null; then echo "note: install $$missing for the live tests"; exit 0; fi; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  echo "installing $$missing"; \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $$missing >/dev/null; \
	fi

demo: system-deps setup
	$(BIN)/streamtag demo

test: system-deps setup
	$(BIN)/python -m pytest -q

bench: setup
	$(BIN)/python -m benchmarks

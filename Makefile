# Two entry points: `make demo` and `make test`. Each creates .venv and installs
# what it needs (Python packages, and the few Debian packages the live tests use).
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
APT_PACKAGES := libportaudio2 pulseaudio pulseaudio-utils tmux gcc g++

.PHONY: setup system-deps demo test bench

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $(STAMP)

setup: $(STAMP)

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

demo: setup system-deps
	$(BIN)/streamtag demo

test: setup system-deps
	$(BIN)/python -m pytest -q

bench: setup
	$(BIN)/python -m benchmarks

# Two commands: `make run` (set up and run the demo stack) and `make test` (set up and run every test).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.requirements-$(shell cat requirements.txt requirements-dev.txt | sha1sum | cut -c1-12)

.PHONY: run test venv run-packages test-packages apt-install clean

# The demo calibrates the int8 fast path on (and retrains from) the ISIC development set when it sits
# beside the checkout; TRAINING_DATASETS in the environment wins.
ISIC_DEV := $(abspath ../shared/datasets/isic-derm-dev)
DEMO_DATASETS := $(or $(TRAINING_DATASETS),$(if $(wildcard $(ISIC_DEV)/labels.csv),$(ISIC_DEV)))

run: run-packages venv
	$(BIN)/python manage.py catalogues --compile
	DEBUG=1 TRAINING_DATASETS="$(DEMO_DATASETS)" $(BIN)/python manage.py demo

test: test-packages venv
	$(BIN)/python manage.py catalogues --compile
	bash tests/run_all.sh $(ARGS)

venv: $(STAMP)

$(STAMP): requirements.txt requirements-dev.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -r requirements-dev.txt
	rm -f $(VENV)/.requirements-* && touch $@

# Debian packages: the stack needs Redis and gettext (to compile the French and German catalogues); the tests
# also PostgreSQL and docker-compose (to validate docker/).
run-packages:
	@$(MAKE) --no-print-directory apt-install NEED="redis-server gettext"

test-packages:
	@$(MAKE) --no-print-directory apt-install NEED="redis-server gettext postgresql docker-compose chromium"

apt-install:
	@missing=""; \
	for pkg in $(NEED); do \
		case $$pkg in \
			postgresql) ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || missing="$$missing $$pkg";; \
			gettext) command -v msgfmt >/dev/null || missing="$$missing $$pkg";; \
			*) command -v $$pkg >/dev/null || missing="$$missing $$pkg";; \
		esac; \
	done; \
	if [ -n "$$missing" ]; then \
		echo "installing:$$missing"; \
		if [ "$$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi; \
		$$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $$missing; \
	fi

clean:
	rm -rf $(VENV) var

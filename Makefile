# logship: make setup | make run | make test | make bench
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
KAFKA_LIBS := .cache/kafka-libs
LOCAL := .local
ETCD_PORT ?= 2379
KAFKA_PORT ?= 9092

.PHONY: setup system-packages venv kafka-jars run stop-local test unit bench dist clean

setup: system-packages venv kafka-jars

# Debian packages for the local services: etcd, a JDK and Maven (Kafka's jars); for
# the security tests openssl (throw-away certificates) and etcdctl (etcd users and roles);
# tmux for logship top's tests; promtool for the alert rules' tests, from Debian's
# prometheus without what it recommends (a node exporter, smartmontools); for the journal's
# tests systemd-journal-remote (it writes real journal files), of the installed systemd's
# own version: a newer one would upgrade systemd too.
system-packages:
	@set -e; missing=""; \
	command -v etcd >/dev/null || missing="$$missing etcd-server"; \
	command -v etcdctl >/dev/null || missing="$$missing etcd-client"; \
	command -v openssl >/dev/null || missing="$$missing openssl"; \
	command -v java >/dev/null || missing="$$missing default-jre-headless"; \
	command -v mvn >/dev/null || missing="$$missing maven"; \
	command -v tmux >/dev/null || missing="$$missing tmux"; \
	lean=""; command -v promtool >/dev/null || lean="prometheus"; \
	if [ ! -x /usr/lib/systemd/systemd-journal-remote ]; then \
	  systemd=$$(dpkg-query -W -f='$${Version}' systemd 2>/dev/null || true); \
	  missing="$$missing systemd-journal-remote$${systemd:+=$$systemd}"; \
	  [ -n "$$systemd" ] || missing="$$missing systemd"; \
	fi; \
	SUDO=$$([ "$$(id -u)" = 0 ] || echo sudo); \
	if [ -n "$$missing$$lean" ]; then \
	  echo "installing:$$missing $$lean"; \
	  $$SUDO apt-get update -qq; \
	fi; \
	if [ -n "$$missing" ]; then \
	  DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $$missing; \
	fi; \
	if [ -n "$$lean" ]; then \
	  DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends $$lean; \
	fi

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q -e '.[test,fast]'
	touch $@

kafka-jars: $(KAFKA_LIBS)/.fetched

$(KAFKA_LIBS)/.fetched: scripts/kafka/pom.xml
	rm -rf $(KAFKA_LIBS)
	mvn -q -B -Dstyle.color=never -f scripts/kafka/pom.xml dependency:copy-dependencies -DoutputDirectory=$(abspath $(KAFKA_LIBS))
	touch $@

# Brings up a local etcd and Kafka when config.yaml's endpoints do not answer, then runs
# the agent in the foreground. Stop it with Ctrl-C; `make stop-local` stops the services.
run: setup
	@scripts/ensure-local-services.sh config.yaml $(LOCAL)
	$(VENV)/bin/logship run --config config.yaml

stop-local:
	scripts/local-kafka.sh stop $(KAFKA_PORT) $(LOCAL)/kafka
	scripts/local-etcd.sh stop $(ETCD_PORT) $(LOCAL)/etcd

test: setup
	$(VENV)/bin/pytest -q -ra

unit: venv
	$(VENV)/bin/pytest -q -m "not e2e"

bench: setup
	$(VENV)/bin/python scripts/bench.py

# The wheel a host installs (pip install dist/logship-*.whl): it carries the systemd
# unit and a sample config (`logship install-unit`).
dist: venv
	rm -rf dist && $(VENV)/bin/pip wheel -q --no-deps -w dist .
	@ls dist/*.whl

clean:
	rm -rf $(VENV) $(KAFKA_LIBS) $(LOCAL) state dist

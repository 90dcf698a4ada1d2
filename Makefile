# flowscope — two commands on a fresh Debian machine: `make demo` and `make test`.
# Debian's /usr/bin/python3 is preferred: it is built with PGO/LTO (the collector's hot loop is
# ~1.5x faster than on a plain source build) and it is where bcc's Python module lives.
PYTHON ?= $(shell test -x /usr/bin/python3 && echo /usr/bin/python3 || command -v python3)
VENV   := .venv
BIN    := $(VENV)/bin
DEMO   := chdb://$(CURDIR)/.flowscope/demo
DEMO_METADATA := sqlite:///$(CURDIR)/.flowscope/demo-metadata.db
# a C compiler and Python's headers: setup.py compiles the per-packet modules (without them those run as Python)
BUILD_PACKAGES := gcc libc6-dev python3-dev
DEB_TEST_PACKAGES := $(BUILD_PACKAGES) python3-venv iproute2 iputils-ping ethtool tshark mariadb-server python3-bpfcc bpfcc-tools linux-headers-amd64 redis-server curl openssl
export DEBIAN_FRONTEND := noninteractive
APT_INSTALL := apt-get update -qq && apt-get install -y -qq --no-install-recommends
# rich tables in the demo: wide enough not to cut cells
export COLUMNS ?= 150

.PHONY: demo test deps lint bench clean

$(BIN)/flowscope: pyproject.toml setup.py
	@# Debian's python3 has no venv module without python3-venv: as root, install it (a fresh machine)
	@$(PYTHON) -m venv $(VENV) >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "installing python3-venv"; rm -rf $(VENV); \
	    $(APT_INSTALL) python3-venv >/dev/null && $(PYTHON) -m venv $(VENV); \
	  else echo "python3 -m venv failed: install python3-venv (apt-get install python3-venv)"; exit 1; fi; }
	@# the compiler for the per-packet modules: as root, installed when missing; otherwise they run as Python
	@missing=""; for p in $(BUILD_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then echo "installing:$$missing"; $(APT_INSTALL) $$missing >/dev/null; \
	  else echo "no$$missing: the per-packet modules will run uncompiled (slower)"; fi; \
	fi
	$(BIN)/pip install -q --upgrade pip setuptools
	$(BIN)/pip install -q -e '.[test]'
	@touch $@ $(BUILT)

# the compiled modules again when a collector source changed since (setup.py only redoes what changed)
BUILT := $(VENV)/.built
$(BUILT): setup.py $(wildcard collector/*.py collector/*/*.py collector/*/*.pxd) | $(BIN)/flowscope
	$(BIN)/python setup.py -q build_ext --inplace
	@touch $@

demo: $(BIN)/flowscope $(BUILT)
	@rm -rf .flowscope/demo .flowscope/demo-metadata.db
	@echo "== flowscope collect: the bundled pcaps (real traffic from ../shared/netlab and a Kube-OVN-like node) into the embedded store, tagged with their inventory"
	$(BIN)/flowscope collect --clickhouse $(DEMO) --metadata $(DEMO_METADATA) --inventory tests/data/inventory/lab.yaml \
	  --pcap tests/data/*.pcap tests/data/*.pcapng
	@echo "== flows by observation point and close type: DeepFlow SQL (flow_log.l4_flow_log)"
	@$(BIN)/flowscope query --clickhouse $(DEMO) --db flow_log --table \
	  "SELECT Enum(observation_point) AS observation_point, Enum(close_type) AS close_type, Enum(tunnel_type) AS tunnel, Count(row) AS flows, Sum(packet) AS packets, Sum(byte) AS bytes FROM l4_flow_log GROUP BY observation_point, close_type, tunnel_type ORDER BY flows DESC LIMIT 8"
	@echo "== requests by application protocol (flow_log.l7_flow_log)"
	@$(BIN)/flowscope query --clickhouse $(DEMO) --db flow_log --table \
	  "SELECT Enum(l7_protocol) AS protocol, Count(row) AS requests, Sum(server_error) AS server_errors, Sum(client_error) AS client_errors, Sum(timeout) AS timeouts, round(Avg(response_duration)) AS avg_us, Max(response_duration) AS max_us FROM l7_flow_log GROUP BY l7_protocol ORDER BY requests DESC"
	@echo "== the slowest requests"
	@$(BIN)/flowscope query --clickhouse $(DEMO) --db flow_log --table \
	  "SELECT Enum(l7_protocol) AS protocol, request_type, substring(request_resource, 1, 40) AS resource, response_code, response_exception, response_duration AS us FROM l7_flow_log WHERE type = 2 ORDER BY us DESC LIMIT 6"
	@echo "== who talks to whom: pods, workloads and Services (names from the flow_tag dictionaries)"
	@$(BIN)/flowscope query --clickhouse $(DEMO) --db flow_log --table \
	  "SELECT pod_0 AS client_pod, pod_ns_1 AS server_ns, pod_group_1 AS server_workload, pod_service_1 AS service, server_port, Count(row) AS flows, Sum(l7_request) AS requests, Sum(l7_error) AS errors FROM l4_flow_log WHERE exist(pod_1) AND protocol IN (6, 17) GROUP BY client_pod, server_ns, server_workload, service, server_port ORDER BY flows DESC"
	@echo "== per-server metrics, 1 minute (flow_metrics.network_map)"
	@$(BIN)/flowscope query --clickhouse $(DEMO) --db flow_metrics --data-precision 1m --table \
	  "SELECT server_port, Sum(new_flow) AS flows, Sum(byte_tx) AS bytes_tx, Sum(byte_rx) AS bytes_rx, round(Avg(rtt)) AS avg_rtt_us, Sum(retrans_rx) AS retrans, Sum(server_reset) + Sum(server_syn_miss) AS conn_failures FROM network_map GROUP BY server_port ORDER BY bytes_rx DESC LIMIT 6"
	@echo "== the same store over HTTP: flowscope up serves DeepFlow's POST /v1/query/ on 127.0.0.1:20416"
	@$(BIN)/flowscope up --clickhouse $(DEMO) --listen 127.0.0.1:20416 & pid=$$!; \
	  for i in $$(seq 1 50); do $(BIN)/python -c "import httpx; httpx.get('http://127.0.0.1:20416/v1/health/').raise_for_status()" 2>/dev/null && break; sleep 0.2; done; \
	  $(BIN)/flowscope query --datasource http://127.0.0.1:20416 --db flow_metrics --data-precision 1m --table \
	    "SELECT Enum(l7_protocol) AS protocol, Sum(request) AS requests, Sum(error) AS errors, round(Avg(rrt)) AS avg_rrt_us FROM application_map GROUP BY l7_protocol ORDER BY requests DESC LIMIT 3"; \
	  kill -TERM $$pid; wait $$pid 2>/dev/null; true

# Debian packages the tests use (tshark: packet truth; iproute2/iputils-ping/ethtool: live capture in namespaces).
deps:
	@missing=""; for p in $(DEB_TEST_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" != 0 ]; then echo "make test needs root to install:$$missing"; exit 1; fi; \
	  echo "installing:$$missing"; $(APT_INSTALL) $$missing >/dev/null; \
	fi
	@# bcc (eBPF tests, --ebpf): tracefs mounted, and a kernel-headers path for the running kernel
	@# (Debian's newest amd64 headers: they only let bcc compile; the tracer reads no kernel struct).
	@if [ "$$(id -u)" = 0 ]; then \
	  mountpoint -q /sys/kernel/tracing || mount -t tracefs tracefs /sys/kernel/tracing 2>/dev/null || true; \
	  K=$$(uname -r); H=$$(ls -d /usr/src/linux-headers-*-amd64 2>/dev/null | sort -V | tail -1); \
	  if [ -n "$$H" ] && [ ! -e /lib/modules/$$K/build ]; then \
	    mkdir -p /lib/modules/$$K && ln -sfn $$H /lib/modules/$$K/build && ln -sfn $${H%-amd64}-common /lib/modules/$$K/source; \
	  fi; \
	fi

test: deps $(BIN)/flowscope $(BUILT)
	$(BIN)/ruff check .
	$(BIN)/pytest -q

lint: $(BIN)/flowscope
	$(BIN)/ruff check .

bench: $(BIN)/flowscope $(BUILT)
	$(BIN)/python bench/collector_l4.py
	$(BIN)/python bench/insert.py
	$(BIN)/python bench/flow_memory.py
	$(BIN)/python bench/collector_l7.py
	$(BIN)/python bench/tagging.py
	$(BIN)/python bench/datasource.py
	$(BIN)/python bench/dashboards.py

clean:
	rm -rf $(VENV) .flowscope .pytest_cache .ruff_cache *.egg-info build
	find collector -name '*.so' -delete

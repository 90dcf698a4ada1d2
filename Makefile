# flowscope — two commands on a fresh Debian machine: `make demo` and `make test`.
# Debian's /usr/bin/python3 is preferred: it is built with PGO/LTO (the collector's hot loop is
# ~1.5x faster than on a plain source build) and it is where bcc's Python module lives.
PYTHON ?= $(shell test -x /usr/bin/python3 && echo /usr/bin/python3 || command -v python3)
VENV   := .venv
BIN    := $(VENV)/bin
DEMO   := chdb://$(CURDIR)/.flowscope/demo
DEB_TEST_PACKAGES := python3-venv iproute2 ethtool tshark mariadb-server
export DEBIAN_FRONTEND := noninteractive

.PHONY: demo test deps lint bench clean

$(BIN)/flowscope: pyproject.toml
	@$(PYTHON) -m venv $(VENV) 2>/dev/null || { echo "python3 -m venv failed: install python3-venv (apt-get install python3-venv)"; exit 1; }
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test]'
	@touch $@

demo: $(BIN)/flowscope
	@rm -rf .flowscope/demo
	@echo "== flowscope collect: the bundled pcaps (real traffic from ../shared/netlab) into the embedded store"
	$(BIN)/flowscope collect --clickhouse $(DEMO) --pcap tests/data/*.pcap
	@echo "== flows by observation point and close type (flow_log.l4_flow_log)"
	@$(BIN)/flowscope query --clickhouse $(DEMO) --db flow_log --table \
	  "SELECT observation_point, close_type, tunnel_type, count() AS flows, sum(packet_tx + packet_rx) AS packets, sum(byte_tx + byte_rx) AS bytes FROM l4_flow_log GROUP BY 1, 2, 3 ORDER BY flows DESC"
	@echo "== the 5 busiest flows"
	@$(BIN)/flowscope query --clickhouse $(DEMO) --db flow_log --table \
	  "SELECT IPv4NumToString(toUInt32(ip4_0)) AS client, IPv4NumToString(toUInt32(ip4_1)) AS server, server_port, byte_tx, byte_rx, rtt, art_count, retrans_rx, close_type FROM l4_flow_log WHERE is_ipv4 ORDER BY byte_rx DESC LIMIT 5"
	@echo "== per-server metrics, 1 minute (flow_metrics.network_map.1m)"
	@$(BIN)/flowscope query --clickhouse $(DEMO) --db flow_metrics --data-precision 1m --table \
	  "SELECT server_port, sum(new_flow) AS flows, sum(byte_tx) AS bytes_tx, sum(byte_rx) AS bytes_rx, round(sum(rtt_sum) / greatest(sum(rtt_count), 1)) AS avg_rtt_us, sum(retrans_rx) AS retrans, sum(server_reset + server_syn_miss) AS conn_failures FROM network_map GROUP BY server_port ORDER BY bytes_rx DESC LIMIT 8"
	@echo "== the same store over HTTP: flowscope up serves DeepFlow's POST /v1/query/ on 127.0.0.1:20416"
	@$(BIN)/flowscope up --clickhouse $(DEMO) --listen 127.0.0.1:20416 & pid=$$!; \
	  for i in $$(seq 1 50); do $(BIN)/python -c "import httpx; httpx.get('http://127.0.0.1:20416/v1/health/').raise_for_status()" 2>/dev/null && break; sleep 0.2; done; \
	  $(BIN)/flowscope query --datasource http://127.0.0.1:20416 --db flow_log \
	    "SELECT close_type, count() AS flows FROM l4_flow_log GROUP BY close_type ORDER BY close_type"; \
	  kill -TERM $$pid; wait $$pid 2>/dev/null; true

# Debian packages the tests use (tshark: packet truth; iproute2/ethtool: live capture in namespaces).
deps:
	@missing=""; for p in $(DEB_TEST_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" != 0 ]; then echo "make test needs root to install:$$missing"; exit 1; fi; \
	  echo "installing:$$missing"; apt-get update -qq && apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	fi

test: deps $(BIN)/flowscope
	$(BIN)/ruff check .
	$(BIN)/pytest -q

lint: $(BIN)/flowscope
	$(BIN)/ruff check .

bench: $(BIN)/flowscope
	$(BIN)/python bench/collector_l4.py
	$(BIN)/python bench/insert.py
	$(BIN)/python bench/flow_memory.py

clean:
	rm -rf $(VENV) .flowscope .pytest_cache .ruff_cache *.egg-info

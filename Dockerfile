# flowscope: collector, datasource and CLI in one image (`docker compose build`).
# The source tree stays in the image and is installed in editable mode: the schema files in sql/
# are read from next to the package (flowscope/migrate.py SQL_DIR).
FROM python:3.11-slim-bookworm

# iproute2: `ip -j` finds a veth's peer namespace for live capture (collector/capture/peer.py).
RUN apt-get update \
    && apt-get install -y --no-install-recommends iproute2 \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /opt/flowscope
COPY pyproject.toml README.md ./
COPY flowscope ./flowscope
COPY collector ./collector
COPY datasource ./datasource
COPY dashboards ./dashboards
COPY sql ./sql
RUN pip install --no-cache-dir -e .

ENTRYPOINT ["flowscope"]
CMD ["--help"]

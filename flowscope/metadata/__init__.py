"""Resource inventory: sources (Kubernetes API, inventory file) → metadata store → tagger and
ClickHouse flow_tag dictionaries (ARCHITECTURE.md "Metadata")."""

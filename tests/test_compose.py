"""docker-compose.yml and the Dockerfile (issue #6).

No Docker engine runs here, so the stack is checked structurally: the compose file validates
against the compose-spec JSON schema (vendored from PyPI's docker-compose 1.29.2, see
tests/data/compose-spec/README.md), every path it references exists in the repository, every
interpolated variable has a default, every FLOWSCOPE_* variable handed to a container is one
flowscope reads, every container command parses with flowscope's own CLI, and the pieces agree
with the generated Grafana provisioning (datasource URL, mounts, the Infinity plugin).
"""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from dashboards import provisioning

ROOT = Path(__file__).resolve().parent.parent
COMPOSE_TEXT = (ROOT / "docker-compose.yml").read_text()
COMPOSE = yaml.safe_load(COMPOSE_TEXT)
SERVICES = COMPOSE["services"]
INTERPOLATION = re.compile(r"(?<!\$)\$\{([A-Za-z_][A-Za-z0-9_]*)([^}]*)\}|(?<!\$)\$([A-Za-z_][A-Za-z0-9_]*)")


def _interpolate(text: str) -> str:
    """Compose's interpolation with every variable at its default; ``$$`` → ``$``."""
    def repl(m: re.Match) -> str:
        rest = m.group(2) or ""
        return rest[2:] if rest.startswith(":-") else rest[1:] if rest.startswith("-") else ""

    return INTERPOLATION.sub(repl, text).replace("$$", "$")


def _validator():
    jsonschema = pytest.importorskip("jsonschema", reason="jsonschema is a test dependency (pyproject [test])")
    schema = json.loads((ROOT / "tests/data/compose-spec/compose_spec.json").read_text())
    jsonschema.Draft201909Validator.check_schema(schema)     # its $schema: draft 2019-09
    return jsonschema.Draft201909Validator(schema)


def test_validates_against_the_compose_spec_schema():
    errors = sorted(_validator().iter_errors(COMPOSE), key=lambda e: list(e.path))
    assert not errors, "\n".join(f"{list(e.path)}: {e.message}" for e in errors)


def test_the_schema_catches_mistakes():
    broken = yaml.safe_load(COMPOSE_TEXT)
    broken["services"]["collector"]["cap_ad"] = ["NET_RAW"]
    broken["services"]["grafana"]["depends_on"]["datasource"]["condition"] = "service_ready"
    assert len(list(_validator().iter_errors(broken))) == 2


def test_every_interpolated_variable_has_a_default():
    for m in INTERPOLATION.finditer(COMPOSE_TEXT):
        name, rest = m.group(1) or m.group(3), m.group(2) or ""
        assert rest.startswith((":-", "-")), f"${{{name}{rest}}} has no default"


def test_the_stack_has_its_services():
    assert set(SERVICES) == {"clickhouse", "mariadb", "migrate", "datasource", "collector", "grafana"}


def _bind_sources(service: dict) -> list[str]:
    out = []
    for v in service.get("volumes", []):
        source = v.split(":", 1)[0] if isinstance(v, str) else v.get("source", "")
        if source.startswith((".", "/")):
            out.append(source)
    return out


def test_every_referenced_repository_path_exists():
    for name, service in SERVICES.items():
        build = service.get("build")
        if build:
            context = ROOT / (build if isinstance(build, str) else build.get("context", "."))
            dockerfile = "Dockerfile" if isinstance(build, str) else build.get("dockerfile", "Dockerfile")
            assert (context / dockerfile).is_file(), f"{name}: {context / dockerfile}"
        for source in _bind_sources(service):
            if source.startswith("./"):
                assert (ROOT / source).exists(), f"{name}: {source} does not exist"
            else:
                assert source in ("/run/netns",), f"{name}: unexpected host path {source}"


def test_dockerfile_copies_what_exists():
    text = (ROOT / "Dockerfile").read_text()
    copies = re.findall(r"^COPY\s+(.+?)\s+\S+$", text, re.M)
    assert copies
    for sources in copies:
        for src in sources.split():
            assert (ROOT / src).exists(), f"Dockerfile copies {src}, which does not exist"
    assert re.search(r'^ENTRYPOINT \["flowscope"\]$', text, re.M)


def _flowscope_reads(name: str) -> bool:
    code = "".join(p.read_text() for d in ("flowscope", "datasource", "collector") for p in (ROOT / d).rglob("*.py"))
    return f'"{name}"' in code


def test_every_flowscope_variable_given_to_a_container_is_read():
    for name, service in SERVICES.items():
        env = service.get("environment", {})
        for key in env:
            if not key.startswith("FLOWSCOPE_"):
                continue
            used_by_entrypoint = key in " ".join(service.get("entrypoint", []))
            assert used_by_entrypoint or _flowscope_reads(key), f"{name}: flowscope never reads {key}"


def _argv(service: dict) -> list[str]:
    """The flowscope arguments a container runs, with compose defaults and its shell expanded."""
    entrypoint = service.get("entrypoint")
    if entrypoint:
        assert entrypoint[:2] == ["sh", "-c"], entrypoint
        script = _interpolate(entrypoint[2])
        env = {k: _interpolate(str(v)) for k, v in service.get("environment", {}).items()}
        script = re.sub(r"\$(\w+)", lambda m: env[m.group(1)], script)
        words = shlex.split(script.split("exec ", 1)[1])
        assert words[0] == "flowscope"
        return words[1:]
    return [_interpolate(str(a)) for a in service["command"]]


@pytest.mark.parametrize("name", ["migrate", "datasource", "collector"])
def test_container_commands_parse_with_the_flowscope_cli(name):
    from flowscope.cli import app

    argv = _argv(SERVICES[name])
    res = CliRunner().invoke(app, [*argv, "--help"])
    assert res.exit_code == 0, f"{name}: flowscope {' '.join(argv)}: {res.output}"


def test_collector_captures_on_the_host_with_configurable_interfaces():
    c = SERVICES["collector"]
    assert c["network_mode"] == "host"
    assert {"NET_ADMIN", "NET_RAW"} <= set(c["cap_add"])
    assert "FLOWSCOPE_INTERFACES" in c["environment"] and "$$FLOWSCOPE_INTERFACES" in c["entrypoint"][2]
    assert _argv(c)[:2] == ["collect", "--iface"]
    # host network: it reaches ClickHouse and MariaDB on the ports they publish on loopback
    assert "@127.0.0.1:8123/" in c["environment"]["FLOWSCOPE_CLICKHOUSE"]
    assert any(p.startswith("127.0.0.1:8123:") for p in SERVICES["clickhouse"]["ports"])
    assert any(p.startswith("127.0.0.1:3306:") for p in SERVICES["mariadb"]["ports"])


def test_grafana_gets_infinity_and_the_generated_provisioning():
    g = SERVICES["grafana"]
    plugins = _interpolate(g["environment"]["GF_PLUGINS_PREINSTALL_SYNC"])
    assert plugins.split("@")[0] == "yesoreyeram-infinity-datasource"
    mounts = {v.split(":")[1]: v.split(":")[0] for v in g["volumes"] if v.startswith("./")}
    assert mounts["/etc/grafana/provisioning"] == "./deploy/grafana/provisioning"
    assert mounts[provisioning.DASHBOARDS_PATH] == "./deploy/grafana/dashboards"
    assert "datasource" in g["depends_on"]


def test_provisioned_urls_point_at_the_datasource_service():
    ds = SERVICES["datasource"]
    argv = _argv(ds)
    assert argv[0] == "serve"
    port = argv[argv.index("--listen") + 1].rsplit(":", 1)[1]
    assert f"http://datasource:{port}" == provisioning.DEFAULT_DATASOURCE_URL
    assert "@clickhouse:8123/" in ds["environment"]["FLOWSCOPE_CLICKHOUSE"]

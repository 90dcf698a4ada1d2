"""``flowscope dashboards build --out DIR``: write the Grafana provisioning tree.

Mounted on the main CLI as ``flowscope dashboards``; also runs alone as
``python -m dashboards.cli build --out DIR``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from dashboards import provisioning

app = typer.Typer(no_args_is_help=True, add_completion=False,
                  help="Grafana dashboards, alert rules and provisioning as code.")


@app.callback()
def _group() -> None:
    """Grafana dashboards, alert rules and provisioning as code."""


@app.command()
def build(
    out: Annotated[Path, typer.Option("--out", help="Directory to write: provisioning/{datasources,dashboards,"
                                      "alerting} and dashboards/flowscope/*.json.")] = Path("deploy/grafana"),
    datasource_url: Annotated[str, typer.Option("--datasource-url", help="flowscope's datasource API as Grafana "
                                                "reaches it (Infinity's URL; Jaeger is URL/jaeger; the alert "
                                                "webhook is URL/v1/alerts/webhook).")]
    = provisioning.DEFAULT_DATASOURCE_URL,
    token_env: Annotated[str, typer.Option("--token-env", help="Name of an environment variable of Grafana's "
                                           "holding the datasource's bearer token (none: no token sent).")] = "",
) -> None:
    """Write the provisioning tree (deterministic: a rebuild is byte-identical)."""
    if token_env and not token_env.replace("_", "").isalnum():
        typer.echo(f"error: --token-env: an environment variable name expected, got {token_env!r}", err=True)
        raise typer.Exit(2)
    written = provisioning.build(out, datasource_url, token_env)
    typer.echo(f"wrote {len(written)} files under {out}/ "
               f"({sum(1 for p in written if p.suffix == '.json')} dashboards)")


if __name__ == "__main__":
    app()

"""`slidebank` command line: a thin layer over the services, for stewards, operators and scripts.

Every command that prints data has `--json` with a stable shape; human output uses Rich. The
commands live by subject (ingest, slides, governance, jobs, annotations, samples, server); this
module assembles them.
"""

from __future__ import annotations

import typer

from slidebank import __version__
from slidebank.cli.annotations import annotations_app
from slidebank.cli.bundles import bundle_app
from slidebank.cli.common import HomeOption, console, open_node
from slidebank.cli.federated import federated_app
from slidebank.cli.governance import register_governance_commands
from slidebank.cli.ingest import register_ingest_command
from slidebank.cli.jobs import register_job_commands
from slidebank.cli.patches import patches_app
from slidebank.cli.samples import register_sample_commands
from slidebank.cli.server import register_serve_command
from slidebank.cli.slides import register_slide_commands
from slidebank.cli.store import store_app

app = typer.Typer(help="Slidebank: collect, describe and share whole-slide images.", no_args_is_help=True)


@app.command()
def version() -> None:
    """Print the Slidebank version."""
    typer.echo(__version__)


@app.command()
def init(home: HomeOption = None) -> None:
    """Create (or upgrade) an embedded node: catalog schema, blob store and node key."""
    import secrets

    from slidebank.access.principal import operator

    node = open_node(home)
    _ = node.secret
    console.print(f"Slidebank node ready in [bold]{node.settings.home}[/bold]")
    if not node.identities.has_users():  # a fresh node: its first administrator
        password = secrets.token_urlsafe(12)
        node.identities.add_user(operator(), "admin", "administrator", password=password)
        console.print(f"Administrator [bold]admin[/bold], password [bold]{password}[/bold] (shown once). "
                      "For an API token: [bold]slidebank tokens create admin[/bold]")
    node.close()


register_ingest_command(app)
register_slide_commands(app)
app.add_typer(annotations_app, name="annotations")
app.add_typer(patches_app, name="patches")
app.add_typer(federated_app, name="federated")
app.add_typer(bundle_app, name="bundle")
app.add_typer(store_app, name="store")
register_governance_commands(app)
register_job_commands(app)
register_sample_commands(app)
register_serve_command(app)


if __name__ == "__main__":  # pragma: no cover - `slidebank serve` runs `python -m slidebank.cli.main jobs work`
    app()

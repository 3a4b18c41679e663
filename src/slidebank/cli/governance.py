"""Governance commands: users, tokens, datasets under policies, access decisions, the audit.

Run on the node itself, these act as its operator (an administrator); `--as NAME` records a
decision as a named DAC member instead. Output shapes are stable for scripts (`--json`).
"""

from __future__ import annotations

import sys
from datetime import date
from pathlib import Path
from typing import Annotated, Optional

import typer

from slidebank.access import OPERATOR
from slidebank.cli.common import (
    HomeOption,
    JsonOption,
    console,
    fail,
    open_node,
    print_json,
    print_list,
)

users_app = typer.Typer(help="People and their roles.", no_args_is_help=True)
tokens_app = typer.Typer(help="API tokens (shown once, stored hashed).", no_args_is_help=True)
datasets_app = typer.Typer(help="Datasets and their policies.", no_args_is_help=True)
access_app = typer.Typer(help="Access requests, decisions and grants.", no_args_is_help=True)
audit_app = typer.Typer(help="The tamper-evident audit log.", no_args_is_help=True)
pseudonyms_app = typer.Typer(help="The optional, encrypted way back from pseudonyms.", no_args_is_help=True)


def register_governance_commands(app: typer.Typer) -> None:
    for sub, name in ((users_app, "users"), (tokens_app, "tokens"), (datasets_app, "datasets"),
                      (access_app, "access"), (audit_app, "audit"), (pseudonyms_app, "pseudonyms")):
        app.add_typer(sub, name=name)
    app.command("erase")(erase)


def _decider(node, acting_as: str | None):  # noqa: ANN001, ANN202
    if acting_as:
        return node.access.principal_for_user(acting_as)
    return node.access.principal_for_requester(OPERATOR)


def _run(action):  # noqa: ANN001, ANN202 - turn domain errors into one clean line and exit 2
    from slidebank.access.service import AccessError

    try:
        return action()
    except AccessError as error:
        fail(str(error))
        return None


@users_app.command("add")
def users_add(
    name: str,
    role: Annotated[str, typer.Option(help="administrator | data_steward | dac_member | researcher")],
    org: Annotated[Optional[str], typer.Option(help="Organisation")] = None,
    password_stdin: Annotated[bool, typer.Option(help="Read a password from stdin (for web log-in)")] = False,
    as_json: JsonOption = False,
    home: HomeOption = None,
) -> None:
    """Add a user."""
    node = open_node(home)
    password = sys.stdin.readline().rstrip("\n") if password_stdin else None
    user = _run(lambda: node.access.add_user(name, role, org, password))
    node.audit.record(OPERATOR, "user.add", detail={"user": name, "role": role})
    print_json(user) if as_json else console.print(f"added {name} ({role})")


@users_app.command("list")
def users_list(as_json: JsonOption = False, home: HomeOption = None) -> None:
    """List users."""
    print_list(open_node(home).access.list_users(), as_json,
               lambda user: f"{user['name']:24} {user['role']:14} {user['organisation'] or ''}")


@tokens_app.command("create")
def tokens_create(
    name: Annotated[str, typer.Argument(help="The user the token acts as")],
    expires: Annotated[int, typer.Option(min=1, max=3650, help="Days until it expires")] = 90,
    label: Annotated[str, typer.Option(help="What the token is for")] = "cli",
    as_json: JsonOption = False,
    home: HomeOption = None,
) -> None:
    """Create an API token; it is printed once, alone on the last line."""
    node = open_node(home)
    token = _run(lambda: node.access.create_token(name, label, expires))
    node.audit.record(OPERATOR, "token.create", detail={"user": name, "label": label, "days": expires})
    if as_json:
        print_json({"user": name, "label": label, "expires_days": expires, "token": token})
        return
    console.print(f"token for {name}, valid {expires} days; store it now, it is not shown again:")
    typer.echo(token)


@datasets_app.command("create")
def datasets_create(
    name: str,
    policy: Annotated[str, typer.Option(help="The terms of use, in words")],
    duo: Annotated[Optional[list[str]], typer.Option(help="GA4GH DUO code (repeatable), e.g. DUO:0000042")] = None,
    title: Annotated[Optional[str], typer.Option()] = None,
    committee: Annotated[Optional[list[str]], typer.Option(help="DAC member deciding requests (repeatable)")] = None,
    steward: Annotated[Optional[list[str]], typer.Option(help="Data steward of the dataset (repeatable)")] = None,
    exist_ok: Annotated[bool, typer.Option("--exist-ok", help="An existing dataset of that name is fine")] = False,
    as_json: JsonOption = False,
    home: HomeOption = None,
) -> None:
    """Create a dataset under a policy (DUO:0000004, no restriction, makes it open to everyone)."""
    node = open_node(home)
    created = _run(lambda: node.access.create_dataset(name, policy, duo or [], title, exist_ok=exist_ok))
    if created.get("existed"):
        print_json(created) if as_json else console.print(f"dataset {name} exists")
        return
    for member in committee or []:
        _run(lambda member=member: node.access.add_committee_member(name, member))
    for person in steward or []:
        _run(lambda person=person: node.access.add_steward(name, person))
    node.audit.record(OPERATOR, "dataset.create", dataset=name, detail={"policy": policy, "duo": duo or []})
    print_json(created) if as_json else console.print(f"dataset {name} ({'open' if created['open'] else 'controlled'})")


@datasets_app.command("list")
def datasets_list(as_json: JsonOption = False, home: HomeOption = None) -> None:
    """List datasets with their policy and size."""
    print_list(open_node(home).catalog.datasets(), as_json,
               lambda dataset: f"{dataset['name']:28} {dataset['images']:6} images  policy {dataset['policy']}")


@access_app.command("request")
def access_request(
    user: Annotated[str, typer.Option()],
    dataset: Annotated[str, typer.Option()],
    purpose: Annotated[str, typer.Option()],
    project: Annotated[Optional[str], typer.Option()] = None,
    as_json: JsonOption = False,
    home: HomeOption = None,
) -> None:
    """File an access request for a user; prints the request id."""
    node = open_node(home)
    request_id = _run(lambda: node.access.request_access(user, dataset, purpose, project))
    print_json({"id": request_id, "status": "pending"}) if as_json else typer.echo(request_id)


@access_app.command("approve")
def access_approve(
    request_id: str,
    expires: Annotated[str, typer.Option(help="YYYY-MM-DD: the grant ends at the end of that day (UTC)")],
    acting_as: Annotated[Optional[str], typer.Option("--as", help="Decide as this DAC member")] = None,
    as_json: JsonOption = False,
    home: HomeOption = None,
) -> None:
    """Approve a pending request until a date; prints the grant id."""
    node = open_node(home)
    try:
        until = date.fromisoformat(expires)
    except ValueError:
        fail(f"--expires must be YYYY-MM-DD, not {expires!r}")
        return
    decider = _run(lambda: _decider(node, acting_as))
    grant = _run(lambda: node.access.approve(request_id, decider, until))
    print_json({"grant": grant, "expires": expires}) if as_json else typer.echo(grant)


@access_app.command("reject")
def access_reject(
    request_id: str,
    reason: Annotated[str, typer.Option()],
    acting_as: Annotated[Optional[str], typer.Option("--as", help="Decide as this DAC member")] = None,
    as_json: JsonOption = False,
    home: HomeOption = None,
) -> None:
    """Reject a pending request with a reason the requester will see."""
    node = open_node(home)
    decider = _run(lambda: _decider(node, acting_as))
    _run(lambda: node.access.reject(request_id, decider, reason))
    print_json({"id": request_id, "status": "rejected"}) if as_json else console.print("rejected")


@access_app.command("revoke")
def access_revoke(
    grant_or_request_id: str,
    acting_as: Annotated[Optional[str], typer.Option("--as", help="Decide as this DAC member")] = None,
    as_json: JsonOption = False,
    home: HomeOption = None,
) -> None:
    """Revoke a grant (given its id or its request's id)."""
    node = open_node(home)
    decider = _run(lambda: _decider(node, acting_as))
    grant = _run(lambda: node.access.revoke(grant_or_request_id, decider))
    print_json({"grant": grant, "status": "revoked"}) if as_json else console.print(f"revoked {grant}")


@access_app.command("list")
def access_list(as_json: JsonOption = False, home: HomeOption = None) -> None:
    """Every access request and its state."""
    node = open_node(home)
    print_list(node.access.requests(_decider(node, None)), as_json,
               lambda request: f"{request['id']}  {request['status']:9} {request['user']:16} {request['dataset']}")


@audit_app.command("show")
def audit_show(
    dataset: Annotated[Optional[str], typer.Option()] = None, as_json: JsonOption = False, home: HomeOption = None
) -> None:
    """Print audit entries, oldest first."""
    for entry in open_node(home).audit.entries(dataset=dataset):
        if as_json:
            print_json(entry)
        else:
            console.print(f"{entry['id']:6} {entry['at'][:19]} {entry['actor']:16} {entry['action']:16} "
                          f"{entry['dataset'] or '':16} {entry['slide_id'] or ''}")


@audit_app.command("verify")
def audit_verify(as_json: JsonOption = False, home: HomeOption = None) -> None:
    """Check the hash chain; exit status 1 if any entry was edited, deleted or reordered."""
    check = open_node(home).audit.verify()
    if as_json:
        print_json({"ok": check.ok, "entries": check.entries, "first_bad_id": check.first_bad_id,
                    "problem": check.problem})
    elif check.ok:
        console.print(f"audit chain intact ({check.entries} entries)")
    else:
        console.print(f"[red]audit chain broken at entry {check.first_bad_id}: {check.problem}[/red]")
    if not check.ok:
        raise typer.Exit(1)


@audit_app.command("export")
def audit_export(
    to: Annotated[Path, typer.Option(help="JSON-lines file to write")],
    dataset: Annotated[Optional[str], typer.Option(help="Only this dataset's entries")] = None,
    home: HomeOption = None,
) -> None:
    """Write audit entries (of one dataset, for its DAC) as JSON lines."""
    import json

    count = 0
    with open(to, "w") as out:
        for entry in open_node(home).audit.entries(dataset=dataset):
            out.write(json.dumps(entry, default=str) + "\n")
            count += 1
    console.print(f"wrote {count} entries to {to}")


def erase(
    subject: Annotated[str, typer.Option(help="The subject's pseudonym as the catalog shows it (SUBJ-…)")],
    as_json: JsonOption = False,
    home: HomeOption = None,
) -> None:
    """Erase a data subject: slides, metadata and derived results; a tombstone and an audit entry remain."""
    from slidebank.access.erasure import erase_subject

    node = open_node(home)
    if not node.catalog.subject_datasets(subject):
        fail(f"no subject {subject!r} in this node", 1)
    report = erase_subject(node, subject, OPERATOR)
    if as_json:
        print_json(report.to_json())
    else:
        console.print(f"erased {report.images} image(s), deleted {report.blobs_deleted} stored file(s)")


@pseudonyms_app.command("reveal")
def pseudonyms_reveal(pseudonym: str, home: HomeOption = None) -> None:
    """Print the submitter's identifier behind a pseudonym (only on nodes that keep the map)."""
    node = open_node(home)
    identifier = _run(lambda: node.access.reveal_pseudonym(pseudonym, node.keys))
    node.audit.record(OPERATOR, "pseudonym.reveal", detail={"pseudonym": pseudonym})
    typer.echo(identifier)

"""Governance commands: users, tokens, datasets under policies, access decisions, the audit.

Run on the node itself, these act as its operator (an administrator); `--as NAME` records a
decision as a named DAC member instead. Output shapes are stable for scripts (`--json`).
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from datetime import date
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Optional, TypeVar

import typer

from slidebank.access.principal import operator
from slidebank.cli.common import (
    HomeOption,
    JsonOption,
    console,
    fail,
    open_node,
    print_json,
    print_list,
    safe,
)

users_app = typer.Typer(help="People and their roles.", no_args_is_help=True)
tokens_app = typer.Typer(help="API tokens (shown once, stored hashed).", no_args_is_help=True)
datasets_app = typer.Typer(help="Datasets and their policies.", no_args_is_help=True)
access_app = typer.Typer(help="Access requests, decisions and grants.", no_args_is_help=True)
audit_app = typer.Typer(help="The tamper-evident audit log.", no_args_is_help=True)
pseudonyms_app = typer.Typer(help="The optional, encrypted way back from pseudonyms.", no_args_is_help=True)
T = TypeVar("T")

if TYPE_CHECKING:
    from slidebank.access.principal import Principal
    from slidebank.node import Node


def register_governance_commands(app: typer.Typer) -> None:
    for sub, name in ((users_app, "users"), (tokens_app, "tokens"), (datasets_app, "datasets"),
                      (access_app, "access"), (audit_app, "audit"), (pseudonyms_app, "pseudonyms")):
        app.add_typer(sub, name=name)
    app.command("erase")(erase)


def _decider(node: Node, acting_as: str | None) -> Principal:
    if acting_as:
        return node.identities.principal_for_user(acting_as)
    return operator()


def _run(action: Callable[[], T]) -> T:
    """Run a service call; a domain error becomes one clean line and exit status 2."""
    from slidebank.access.errors import AccessError

    try:
        return action()
    except AccessError as error:
        fail(str(error))
        raise AssertionError("unreachable") from error


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
    user = _run(lambda: node.identities.add_user(operator(), name, role, org, password))
    print_json(user) if as_json else console.print(f"added {name} ({role})")


@users_app.command("list")
def users_list(as_json: JsonOption = False, home: HomeOption = None) -> None:
    """List users."""
    print_list(open_node(home).identities.list_users(), as_json,
               lambda user: f"{safe(user['name']):24} {user['role']:14} {safe(user['organisation'] or '')}"
               + ("  (disabled)" if user["disabled"] else ""))


@users_app.command("disable")
def users_disable(name: str, as_json: JsonOption = False, home: HomeOption = None) -> None:
    """Disable an account: its tokens and sessions stop working on the next request."""
    user = _run(lambda: open_node(home).identities.set_disabled(operator(), name, True))
    print_json(user) if as_json else console.print(f"disabled {safe(name)}")


@users_app.command("enable")
def users_enable(name: str, as_json: JsonOption = False, home: HomeOption = None) -> None:
    """Enable a disabled account again."""
    user = _run(lambda: open_node(home).identities.set_disabled(operator(), name, False))
    print_json(user) if as_json else console.print(f"enabled {safe(name)}")


@users_app.command("logout")
def users_logout(name: str, as_json: JsonOption = False, home: HomeOption = None) -> None:
    """End every browser session of a user, in every server process, now."""
    ended = _run(lambda: open_node(home).identities.end_sessions(operator(), name))
    print_json({"name": name, "sessions_ended": ended}) if as_json else console.print(f"ended {ended} session(s)")


@tokens_app.command("create")
def tokens_create(
    name: Annotated[str, typer.Argument(help="The user the token acts as")],
    expires: Annotated[int, typer.Option(min=1, max=365, help="Days until it expires (at most a year)")] = 90,
    label: Annotated[str, typer.Option(help="What the token is for")] = "cli",
    as_json: JsonOption = False,
    home: HomeOption = None,
) -> None:
    """Create an API token; it is printed once, alone on the last line."""
    node = open_node(home)
    token, entry = _run(lambda: node.identities.create_token(operator(), name, label, expires))
    if as_json:
        print_json({"user": name, "label": label, "expires_days": expires, "id": entry["id"], "token": token})
        return
    console.print(f"token {entry['id']} for {safe(name)}, valid {expires} days; store it now, it is not shown again:")
    typer.echo(token)


@tokens_app.command("list")
def tokens_list(
    user: Annotated[Optional[str], typer.Option(help="Only this user's tokens")] = None,
    as_json: JsonOption = False, home: HomeOption = None,
) -> None:
    """List tokens (their ids, never the secrets)."""
    print_list(_run(lambda: open_node(home).identities.list_tokens(operator(), user)), as_json,
               lambda t: f"{t['id']}  {safe(t['user']):20} {safe(t['label']):16} expires {t['expires_at'][:10]}"
               + (f"  revoked {t['revoked_at'][:10]}" if t["revoked_at"] else ""))


@tokens_app.command("revoke")
def tokens_revoke(
    token_id: Annotated[str, typer.Argument(help="The id `tokens list` shows, or the token itself")],
    as_json: JsonOption = False, home: HomeOption = None,
) -> None:
    """Revoke a token: it stops working on the next request, in every server process."""
    entry = _run(lambda: open_node(home).identities.revoke_token(operator(), token_id))
    print_json(entry) if as_json else console.print(f"revoked token {entry['id']} of {safe(entry['user'])}")


@datasets_app.command("create")
def datasets_create(
    name: str,
    policy: Annotated[str, typer.Option(help="The terms of use, in words")],
    duo: Annotated[Optional[list[str]], typer.Option(help="GA4GH DUO code (repeatable), e.g. DUO:0000042")] = None,
    title: Annotated[Optional[str], typer.Option()] = None,
    committee: Annotated[Optional[list[str]], typer.Option(help="DAC member deciding requests (repeatable)")] = None,
    steward: Annotated[Optional[list[str]], typer.Option(help="Data steward of the dataset (repeatable)")] = None,
    exist_ok: Annotated[bool, typer.Option("--exist-ok", help="An existing dataset of that name is fine")] = False,
    max_grant_days: Annotated[Optional[int], typer.Option(help="Longest grant the committee may give (days)")] = None,
    as_json: JsonOption = False,
    home: HomeOption = None,
) -> None:
    """Create a dataset under a policy (DUO:0000004, no restriction, makes it open to everyone)."""
    node = open_node(home)
    created = _run(lambda: node.governance.create_dataset(operator(), name, policy, duo or [], title,
                                                          exist_ok=exist_ok, max_grant_days=max_grant_days))
    if created.get("existed"):
        print_json(created) if as_json else console.print(f"dataset {name} exists")
        return
    for member in committee or []:
        _run(partial(node.governance.add_committee_member, operator(), name, member))
    for person in steward or []:
        _run(partial(node.governance.add_steward, operator(), name, person))
    print_json(created) if as_json else console.print(f"dataset {name} ({'open' if created['open'] else 'controlled'})")


@datasets_app.command("policy")
def datasets_policy(
    name: str,
    policy: Annotated[Optional[str], typer.Option(help="New terms of use, in words")] = None,
    duo: Annotated[Optional[list[str]], typer.Option(help="GA4GH DUO codes (repeatable); replaces the old")] = None,
    max_grant_days: Annotated[Optional[int], typer.Option(help="Longest grant the committee may give (days)")] = None,
    as_json: JsonOption = False,
    home: HomeOption = None,
) -> None:
    """Change a dataset's policy; opening or closing it takes effect on the next request."""
    changed = _run(lambda: open_node(home).governance.set_policy(operator(), name, policy, duo, max_grant_days))
    print_json(changed) if as_json else console.print(f"dataset {name} ({'open' if changed['open'] else 'controlled'})")


@datasets_app.command("committee")
def datasets_committee(
    name: str, member: Annotated[list[str], typer.Option(help="DAC member (repeatable)")], home: HomeOption = None,
) -> None:
    """Add members to a dataset's data access committee."""
    _add_people(home, name, member, "committee")


@datasets_app.command("steward")
def datasets_steward(
    name: str, user: Annotated[list[str], typer.Option(help="Data steward (repeatable)")], home: HomeOption = None,
) -> None:
    """Add data stewards to a dataset."""
    _add_people(home, name, user, "stewards")


def _add_people(home: Path | None, dataset: str, people: list[str], part: str) -> None:
    node = open_node(home)
    add = node.governance.add_committee_member if part == "committee" else node.governance.add_steward
    for person in people:
        _run(partial(add, operator(), dataset, person))
    console.print(f"{part} of {dataset}: added {', '.join(safe(p) for p in people)}")


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
    requester = _run(lambda: node.identities.principal_for_user(user))
    request_id = _run(lambda: node.governance.request_access(requester, dataset, purpose, project))
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
    grant = _run(lambda: node.governance.approve(request_id, decider, until))
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
    _run(lambda: node.governance.reject(request_id, decider, reason))
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
    grant = _run(lambda: node.governance.revoke(grant_or_request_id, decider))
    print_json({"grant": grant, "status": "revoked"}) if as_json else console.print(f"revoked {grant}")


@access_app.command("list")
def access_list(as_json: JsonOption = False, home: HomeOption = None) -> None:
    """Every access request and its state."""
    node = open_node(home)
    print_list(node.governance.requests(_decider(node, None)), as_json,
               lambda request: f"{request['id']}  {request['status']:9} {safe(request['user']):16} "
                               f"{safe(request['dataset'])}")


@audit_app.command("show")
def audit_show(
    dataset: Annotated[Optional[str], typer.Option()] = None, as_json: JsonOption = False, home: HomeOption = None
) -> None:
    """Print audit entries, oldest first."""
    for entry in open_node(home).audit.entries(dataset=dataset):
        if as_json:
            print_json(entry)
        else:
            console.print(f"{entry['id']:6} {entry['at'][:19]} {safe(entry['actor']):16} {entry['action']:16} "
                          f"{safe(entry['dataset'] or ''):16} {safe(entry['slide_id'] or '')}", markup=False,
                          highlight=False)


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
    node = open_node(home)
    if not node.catalog.subject_datasets(subject):
        fail(f"no subject {safe(subject)!r} in this node", 1)
    report = _run(lambda: node.erasures.erase(subject, operator()))
    if as_json:
        print_json(report.to_json())
    else:
        console.print(f"erased {report.images} image(s), deleted {report.blobs_deleted} stored file(s)")


@pseudonyms_app.command("reveal")
def pseudonyms_reveal(pseudonym: str, home: HomeOption = None) -> None:
    """Print the submitter's identifier behind a pseudonym (only on nodes that keep the map)."""
    node = open_node(home)
    typer.echo(_run(lambda: node.pseudonyms.reveal(operator(), pseudonym)))

"""``agent-ledger``: run and operate a ledger (local, or a team's on PostgreSQL).

Every command that reads or writes the database takes ``--db PATH`` (a SQLite
file or a ``postgresql://`` URL; default: ``AGENT_LEDGER_DB``, else ``ledger.db``
in the ledger's state directory: ``AGENT_LEDGER_HOME``, else the user's data
directory) and works whether or not a server is running on it.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import functools
import os
import re
import sys
from collections.abc import Sequence
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any, Optional, Union

from ._version import __version__


def _store(args: argparse.Namespace, **options: Any) -> Any:
    """The ledger's service over ``--db``. Only ``serve`` and ``migrate`` upgrade a shared (PostgreSQL) schema."""
    from .local.service import LedgerService
    from .local.store import open_store

    return LedgerService(open_store(args.db, migrate=args.command in ("serve", "migrate")), **options)


def _print_json(value: Any) -> None:
    """``value`` as one line of JSON, every amount a number with exactly its digits."""
    from .local import money

    print(money.dumps(value))


def _cmd_serve(args: argparse.Namespace) -> int:
    from .local.app import create_app
    from .local.dashboard.auth import LOGIN_ENV, is_loopback
    from .local.pricing import PriceBook
    from .local.server import ensure_local_key, serve_forever, serve_workers, url_for
    from .local.store import is_url

    say = functools.partial(print, flush=True)  # a log file or a pipe sees each line at once

    if args.workers < 1:
        raise ValueError(f"--workers takes a number of server processes, 1 or more; got {args.workers}")
    if args.workers > 1 and not is_url(args.db) and str(args.db) in (":memory:", ""):
        raise ValueError("--workers needs a database its processes share: a file or a postgresql:// URL")
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        print(
            f"Warning: listening on {args.host}, not only on this machine: anyone who can reach it can try keys. "
            "Put TLS and a firewall in front of it.",
            file=sys.stderr,
        )
    prices = PriceBook(args.prices)  # a bad --prices file is refused before anything listens
    # The dashboard asks for an API key unless only this machine can reach it (the worker processes,
    # which make their own app, read the same from the environment).
    login = not is_loopback(args.host)
    if login:
        os.environ[LOGIN_ENV] = "1"
    with _store(args, prices=prices) as store:  # serve migrates the schema: once, here, before any worker
        say(f"Database: {store.store.description}")
        try:
            key_path, created = ensure_local_key(store)
        except OSError as exc:  # a read-only home: serve anyway, with keys made by hand
            print(
                f"Warning: could not write the local key file ({exc}); give clients a key from "
                "`agent-ledger keys create --name NAME` as AGENT_LEDGER_API_KEY.",
                file=sys.stderr,
                flush=True,
            )
        else:
            say(
                f"{'Wrote a new' if created else 'Kept the'} local key in {key_path}: clients on this machine "
                "with no AGENT_LEDGER_API_KEY use it automatically."
            )
        if args.port:
            say(
                f"Dashboard: {url_for(args.host, args.port)}/ "
                + (
                    "(asks for an API key: it is reachable beyond this machine)"
                    if login
                    else "(no login: this machine only)"
                )
            )
        if args.workers == 1:
            serve_forever(
                create_app(store, dashboard_login=True if login else None), args.host, args.port, announce=say
            )
            return 0
    # Several processes: each opens the database itself; this one binds the port and supervises them.
    try:
        serve_workers(args.db, args.prices, args.host, args.port, args.workers, announce=say)
    except RuntimeError as exc:
        print(f"agent-ledger: error: {exc}", file=sys.stderr)
        return 1
    return 0


def _schema_version(db: Union[Path, str]) -> int:
    """The schema version ``db`` has before ``migrate`` touches it (0: empty or not there yet).

    Read straight from the database: opening a store would already migrate it.
    """
    from .local.store import MigrationError, is_url

    if is_url(db):
        import psycopg

        from .local.store.postgres import libpq_url

        try:
            with psycopg.connect(libpq_url(str(db)), autocommit=True, connect_timeout=30) as connection:
                found = connection.execute("SELECT to_regclass('schema_migrations')").fetchone()
                if found is None or found[0] is None:
                    return 0
                row = connection.execute("SELECT MAX(version) FROM schema_migrations").fetchone()
        except psycopg.Error as exc:
            raise MigrationError(f"cannot connect to the PostgreSQL database: {_one_line(exc)}") from None
        return int(row[0] or 0) if row is not None else 0
    import sqlite3

    path = Path(db)
    if str(db) in (":memory:", "") or not path.exists():
        return 0
    with contextlib.closing(sqlite3.connect(str(path))) as connection:
        tables = {r[0] for r in connection.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        if "schema_migrations" not in tables:
            return 0  # a ledger file from before versioned migrations is at version 0 too
        row = connection.execute("SELECT MAX(version) FROM schema_migrations").fetchone()
    return int(row[0] or 0)


def _cmd_migrate(args: argparse.Namespace) -> int:
    before = _schema_version(args.db)
    with _store(args) as store:  # opening it migrates (only serve and migrate may)
        _, after = store.store.migrate()
    print(f"schema version {before} -> {after}" if before < after else f"already at version {after}")
    return 0


_DURATION = re.compile(r"([0-9]+)([mhdw])")
_DURATION_UNITS = {"m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


def _duration(text: str) -> datetime.timedelta:
    match = _DURATION.fullmatch(text.strip().lower())
    if match is None:
        raise ValueError(
            f"--older-than takes a duration such as 30d, 12h or 2w (m: minutes, h: hours, d: days, w: weeks); "
            f"got {text!r}"
        )
    try:
        return datetime.timedelta(**{_DURATION_UNITS[match.group(2)]: int(match.group(1))})
    except OverflowError:
        raise ValueError(f"--older-than {text} is longer than the calendar") from None


class _Rollback(Exception):
    pass


def _expired_idempotency_records(service: Any, now: datetime.datetime) -> int:
    """How many idempotency records ``prune`` would forget now, and none forgotten.

    The store counts them only by deleting them, so they are deleted in a transaction that is then
    rolled back.
    """
    from .local.service import IDEMPOTENCY_LIFETIME, stamp

    counted = 0
    with contextlib.suppress(_Rollback), service.store.write(None) as tx:
        counted = tx.forget_idempotency(stamp(now - IDEMPOTENCY_LIFETIME))
        raise _Rollback
    return counted


def _cmd_prune(args: argparse.Namespace) -> int:
    from .local.budgets import iso
    from .local.records import SessionQuery, utc_now

    older_than = _duration(args.older_than)
    now = utc_now()
    try:
        cutoff = iso(now - older_than)
    except OverflowError:
        raise ValueError(f"--older-than {args.older_than} reaches before the year 1") from None
    with _store(args, clock=lambda: now) as store:  # one "now" for the cutoff shown and the one applied
        if args.dry_run:
            sessions = events = 0
            for session in store.iter_sessions(SessionQuery(started_before=cutoff)):
                ended = session["endedAt"]
                if session["status"] != "running" and ended is not None and ended < cutoff:
                    sessions += 1
                    events += session["eventCount"]
            records = _expired_idempotency_records(store, now)
            print(
                f"Would delete {sessions} sessions that ended before {cutoff} ({events} events, with their "
                f"reservations) and {records} expired idempotency records. Nothing was deleted (--dry-run)."
            )
        else:
            removed = store.prune(older_than)
            print(
                f"Deleted {removed['sessions']} sessions that ended before {cutoff} (with their events and "
                f"reservations) and {removed['idempotencyRecords']} expired idempotency records."
            )
    return 0


def _moment(text: str, flag: str) -> str:
    """An ISO 8601 date or time (UTC unless it says otherwise) as the ledger stores times, to compare with them."""
    raw = text.strip()
    if raw[-1:] in ("Z", "z"):
        raw = raw[:-1] + "+00:00"
    try:
        moment = datetime.datetime.fromisoformat(raw)
    except ValueError:
        raise ValueError(
            f"{flag} takes an ISO 8601 date or time, such as 2026-01-31 or 2026-01-31T12:00:00Z; got {text!r}"
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=datetime.timezone.utc)
    return moment.astimezone(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _cmd_export(args: argparse.Namespace) -> int:
    import tempfile

    from .local.export import export_sessions
    from .local.records import SessionQuery

    since = _moment(args.since, "--since") if args.since else None
    until = _moment(args.until, "--until") if args.until else None
    if since is not None and until is not None and since >= until:
        raise ValueError(f"--since ({args.since}) must be before --until ({args.until})")
    query = SessionQuery(agent_name=args.agent, workspace=args.workspace, started_after=since, started_before=until)
    with _store(args) as store:
        if args.output in (None, "-"):
            export_sessions(store, sys.stdout, args.format, query)
            sys.stdout.flush()
            return 0
        target = Path(args.output).expanduser()
        if not target.parent.is_dir():
            raise OSError(f"cannot write {target}: there is no directory {target.parent}")
        # Written beside the target and renamed over it when complete: never a half export under its name.
        # mkstemp makes it 0600, as the database: it holds the prompts and outputs the events carry.
        handle, partial = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".partial", dir=str(target.parent))
        try:
            with os.fdopen(handle, "w", encoding="utf-8", newline="") as out:
                done = export_sessions(store, out, args.format, query)
            os.replace(partial, target)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(partial)
            raise
    print(f"Exported {done.sessions} sessions ({done.events} events) to {target}.")
    return 0


def _cmd_keys(args: argparse.Namespace) -> int:
    from .local.report import keys_json, keys_table

    with _store(args) as store:
        if args.keys_command == "create":
            new = store.create_key(args.name, args.workspace)
            print(f"Created key {new.key.id} ({new.key.name}) in workspace {new.key.workspace}.")
            print("Store it now: it is shown only once. Use it as AGENT_LEDGER_API_KEY:")
            print(new.secret)
        elif args.keys_command == "list":
            keys = store.list_keys()
            if args.json:
                _print_json(keys_json(keys))
            else:
                print(keys_table(keys))
        else:
            revoked = store.revoke_key(args.key_id)
            print(f"Revoked key {revoked.id} ({revoked.name}).")
    return 0


def _amount(text: str) -> Decimal:
    """A command-line amount, read exactly (``0.1`` is one tenth, not the float nearest to it)."""
    try:
        amount = Decimal(text)
    except InvalidOperation:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not amount.is_finite():
        raise argparse.ArgumentTypeError(f"{text!r} is not a finite number")
    return amount


def _percent(text: str) -> Decimal:
    value = _amount(text)
    if not 0 < value <= 100:
        raise argparse.ArgumentTypeError(f"{text!r} must be above 0 and at most 100 (a percentage of the limit)")
    return value


def _cmd_budget(args: argparse.Namespace) -> int:
    from .local.records import UNSET
    from .local.report import budgets_json, budgets_table, usd

    with _store(args) as store:
        command = args.budget_command
        if command in ("set", "set-workspace") and args.usd < 0:
            raise ValueError("a budget must be zero or more US dollars")
        warn = args.warn_at if getattr(args, "warn_at", None) is not None else UNSET
        if command == "set":
            window = "monthly" if args.monthly else "daily"
            limits = {"monthly_limit_usd": args.usd} if args.monthly else {"daily_limit_usd": args.usd}
            budget = store.set_budget(args.workspace, args.agent, warn_at_percent=warn, **limits)
            spent, resets = (
                (budget["spentThisMonthUsd"], budget["monthResetsAt"])
                if args.monthly
                else (budget["spentTodayUsd"], budget["resetsAt"])
            )
            warning = f"; warns at {budget['warnAtPercent']}%" if budget["warnAtPercent"] is not None else ""
            print(
                f"{window.capitalize()} budget of {args.agent!r} in workspace {args.workspace}: {usd(args.usd)} "
                f"(spent {'this month' if args.monthly else 'today'}: {usd(spent)}; resets {resets}{warning})."
            )
        elif command == "remove":
            which = {"daily": ("daily_limit_usd",), "monthly": ("monthly_limit_usd",)}.get(
                args.only or "", ("daily_limit_usd", "monthly_limit_usd")
            )
            store.set_budget(args.workspace, args.agent, **dict.fromkeys(which))
            what = f"{args.only} budget" if args.only else "budgets"
            print(f"Removed the {what} of {args.agent!r} in workspace {args.workspace}.")
        elif command == "set-workspace":
            budget = store.set_workspace_budget(args.workspace, args.usd, warn_at_percent=warn)
            print(
                f"Daily budget of workspace {args.workspace}, all agents together: {usd(args.usd)} "
                f"(spent today: {usd(budget['spentTodayUsd'])}; resets {budget['resetsAt']})."
            )
        elif command == "remove-workspace":
            store.set_workspace_budget(args.workspace, None)
            print(f"Removed the daily budget of workspace {args.workspace}.")
        else:
            budgets, workspace_budgets = store.budgets(args.workspace), store.workspace_budgets(args.workspace)
            if args.json:
                _print_json(budgets_json(budgets, workspace_budgets))
            else:
                print(budgets_table(budgets, workspace_budgets))
    return 0


def _cmd_prices(args: argparse.Namespace) -> int:
    from .local.pricing import PriceBook, Rates, normalise_name
    from .local.report import prices_json, prices_table

    with _store(args) as store:
        if args.prices_command == "set":
            rates = Rates(args.input, args.output, args.cache_read, args.cache_write)
            if any(r is not None and r < 0 for r in (args.input, args.output, args.cache_read, args.cache_write)):
                raise ValueError("prices must be zero or more US dollars per million tokens")
            name = normalise_name(args.model)
            store.set_price(args.workspace, name, rates)
            print(f"Price of {name} in workspace {args.workspace}: {rates.describe()}.")
        elif args.prices_command == "remove":
            name = normalise_name(args.model)
            if not store.remove_price(args.workspace, name):
                raise LookupError(f"no price for {name!r} in workspace {args.workspace}; `agent-ledger prices list`")
            print(f"Removed the price of {name} in workspace {args.workspace}.")
        elif args.prices_command == "check":
            found, description = PriceBook(args.prices).describe(
                args.provider, args.model, store.prices(args.workspace)
            )
            print(description)
            return 0 if found else 1
        else:
            prices = store.prices(args.workspace)
            if args.json:
                _print_json(prices_json(args.workspace, prices))
            else:
                print(prices_table(prices))
    return 0


def _cmd_settings(args: argparse.Namespace) -> int:
    with _store(args) as store:
        if args.settings_command == "set":
            value = args.value.strip().lower()
            if value not in ("true", "false", "on", "off", "yes", "no", "1", "0"):
                raise ValueError(f"allow-unpriced-models takes true or false, not {args.value!r}")
            store.set_settings(args.workspace, allow_unpriced_models=value in ("true", "on", "yes", "1"))
        settings = store.settings(args.workspace)
        if getattr(args, "json", False):
            _print_json(settings)
            return 0
        allowed = settings["allowUnpricedModels"]
        print(
            f"Workspace {args.workspace}: allow-unpriced-models = {str(allowed).lower()} "
            + (
                "(agents with a budget may call models the ledger cannot price; those calls count as $0)."
                if allowed
                else "(agents with a budget are refused calls the ledger cannot price)."
            )
        )
    return 0


def _cmd_sessions(args: argparse.Namespace) -> int:
    from .local.records import SessionQuery
    from .local.report import sessions_table

    if args.sessions_command == "delete":
        return _delete_session(args)
    with _store(args) as store:
        page = store.list_sessions(
            SessionQuery(
                agent_name=args.agent,
                status=args.status,
                user_id=args.user,
                tags=tuple(args.tag or ()),
                limit=args.limit,
                workspace=args.workspace,
                cursor=args.cursor,
            )
        )
        if args.json:
            _print_json(page)
        else:
            print(sessions_table(page["sessions"]))
    return 0


def _no_session(store: Any, session_id: str, workspace: Optional[str] = None) -> str:
    where = f" in workspace {workspace}" if workspace else ""
    return f"Session {session_id!r} not found{where} in {store.store.description}; `agent-ledger sessions` lists them"


def _delete_session(args: argparse.Namespace) -> int:
    from .local.records import NotFound

    with _store(args) as store:
        try:
            session = store.get_session(args.session_id, args.workspace, events_limit=1)
            store.delete_session(args.workspace, args.session_id)
        except NotFound:
            raise LookupError(_no_session(store, args.session_id, args.workspace)) from None
    print(
        f"Deleted session {session['id']} ({session['agentName']}, {session['status']}, "
        f"{session['eventCount']} events) with its events and reservations; what it spent still counts "
        "against budgets."
    )
    return 0


def _cmd_show(args: argparse.Namespace) -> int:
    from .local.export import write_session_json
    from .local.records import NotFound
    from .local.report import timeline

    with _store(args) as store:
        try:
            session_id = store.resolve_session_id(args.session_id)  # an id, or the start of one
            if args.json:  # written a page of events at a time, as export does
                write_session_json(sys.stdout, store, session_id)
                print()
            else:
                print(timeline(store.session_with_all_events(session_id), full=args.full))
        except NotFound:
            raise LookupError(_no_session(store, args.session_id)) from None
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from .local.demo import run_demo

    return run_demo(db=args.db_explicit)


def _db_path(value: str) -> Union[Path, str]:
    from .local.store import is_url

    return value if is_url(value) else Path(value).expanduser()


def build_parser() -> argparse.ArgumentParser:
    from .local.server import DEFAULT_PORT, default_db_path

    db_help = (
        "a SQLite file or a postgresql:// URL (default: $AGENT_LEDGER_DB, else ledger.db in $AGENT_LEDGER_HOME "
        "or your data directory)"
    )
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--db", type=_db_path, default=None, help=db_help)
    json_help = "print JSON instead of the table (one line; amounts are JSON numbers with their exact digits)"

    parser = argparse.ArgumentParser(
        prog="agent-ledger",
        description="Run and operate an Agent Ledger: sessions, costs and budgets, on SQLite or PostgreSQL.",
        epilog=(
            "Machine-readable output: sessions, show, budget show, keys list, prices list and settings show take "
            "--json. Operations: migrate (schema), prune (retention), export (jsonl or csv), sessions delete, "
            "serve --workers N. Errors are one line on stderr, exit code 1."
        ),
    )
    parser.add_argument("--version", action="version", version=f"agent-ledger-sdk {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = commands.add_parser("serve", parents=[common], help="serve the Agent Ledger API")
    serve.add_argument("--host", default="127.0.0.1", help="interface to listen on (default: 127.0.0.1)")
    serve.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"port (default: {DEFAULT_PORT})")
    serve.add_argument("--prices", default=None, help="JSON file of price overrides ($AGENT_LEDGER_PRICES)")
    serve.add_argument(
        "--workers",
        type=int,
        default=1,
        metavar="N",
        help="server processes sharing the port (default: 1); on a SQLite file, up to one per core (its writes "
        "take turns); for more, or several machines, a PostgreSQL database",
    )
    serve.set_defaults(handler=_cmd_serve)

    migrate = commands.add_parser(
        "migrate",
        parents=[common],
        help="bring the database's schema up to date (PostgreSQL: before deploying a new version)",
    )
    migrate.set_defaults(handler=_cmd_migrate)

    prune = commands.add_parser(
        "prune",
        parents=[common],
        help="delete sessions that ended long ago (with their events) and expired idempotency records",
        description="Delete the sessions that ended more than --older-than ago, with their events and "
        "reservations (running sessions are kept; what they spent still counts against budgets), and the "
        "idempotency records past their 24 hours.",
    )
    prune.add_argument(
        "--older-than",
        required=True,
        metavar="DURATION",
        help="a duration: a number and m (minutes), h (hours), d (days) or w (weeks), e.g. 30d, 12h, 2w",
    )
    prune.add_argument("--dry-run", action="store_true", help="count what would be deleted, delete nothing")
    prune.set_defaults(handler=_cmd_prune)

    export = commands.add_parser(
        "export",
        parents=[common],
        help="write sessions and their events as JSON Lines or CSV",
        description="Write the sessions (newest first) with their events, a session at a time. jsonl: one JSON "
        "object per session, as GET /v1/sessions/{id} with every event in 'events'. csv: a header row, then one "
        "row per event with its session's columns (sessions without events have no row). Amounts are exact.",
    )
    export.add_argument("--format", choices=["jsonl", "csv"], default="jsonl", help="jsonl (default) or csv")
    export.add_argument("--workspace", help="only this workspace")
    export.add_argument("--agent", help="only this agent")
    export.add_argument(
        "--since", metavar="ISO", help="only sessions started at or after, e.g. 2026-01-01 or 2026-01-01T09:00Z"
    )
    export.add_argument("--until", metavar="ISO", help="only sessions started before (UTC unless an offset is given)")
    export.add_argument("--output", "-o", metavar="FILE", help="write to FILE (made 0600) instead of stdout")
    export.set_defaults(handler=_cmd_export)

    keys = commands.add_parser("keys", help="create, list and revoke API keys")
    key_commands = keys.add_subparsers(dest="keys_command", required=True, metavar="ACTION")
    create = key_commands.add_parser("create", parents=[common], help="create a key; prints it once, last")
    create.add_argument("--name", required=True, help="what the key is for")
    create.add_argument("--workspace", default="default", help="the key's workspace (default: default)")
    key_list = key_commands.add_parser("list", parents=[common], help="list keys (never their secrets)")
    key_list.add_argument("--json", action="store_true", help=json_help)
    revoke = key_commands.add_parser("revoke", parents=[common], help="revoke a key by its id")
    revoke.add_argument("key_id", help="the id that `keys list` shows")
    keys.set_defaults(handler=_cmd_keys)

    budget = commands.add_parser("budget", help="set and show USD budgets: per agent, per workspace")
    budget_commands = budget.add_subparsers(dest="budget_command", required=True, metavar="ACTION")
    budget_set = budget_commands.add_parser(
        "set", parents=[common], help="set an agent's daily (UTC day) or, with --monthly, monthly limit in USD"
    )
    budget_set.add_argument("agent", help="agent name")
    budget_set.add_argument("usd", type=_amount, help="limit in US dollars")
    budget_set.add_argument("--monthly", action="store_true", help="the limit per UTC calendar month")
    budget_remove = budget_commands.add_parser("remove", parents=[common], help="remove an agent's limits")
    budget_remove.add_argument("agent", help="agent name")
    only = budget_remove.add_mutually_exclusive_group()
    only.add_argument("--daily", dest="only", action="store_const", const="daily", help="only the daily limit")
    only.add_argument("--monthly", dest="only", action="store_const", const="monthly", help="only the monthly limit")
    budget_workspace = budget_commands.add_parser(
        "set-workspace", parents=[common], help="set the workspace's daily limit in USD, all agents together"
    )
    budget_workspace.add_argument("usd", type=_amount, help="daily limit in US dollars")
    budget_unset_workspace = budget_commands.add_parser(
        "remove-workspace", parents=[common], help="remove the workspace's daily limit"
    )
    for sub in (budget_set, budget_workspace):
        sub.add_argument(
            "--warn-at",
            type=_percent,
            metavar="PERCENT",
            help="record a budget_warning (and log it) when the spend crosses this share of the limit, e.g. 80",
        )
    budget_show = budget_commands.add_parser(
        "show", parents=[common], help="each budget: spent, reserved, remaining, reset"
    )
    budget_show.add_argument("--json", action="store_true", help=json_help)
    for sub in (budget_set, budget_remove, budget_workspace, budget_unset_workspace):
        sub.add_argument("--workspace", default="default", help="workspace (default: default)")
    budget_commands.choices["show"].add_argument("--workspace", default=None, help="only this workspace")
    budget.set_defaults(handler=_cmd_budget)

    prices = commands.add_parser("prices", help="price models genai-prices does not know, per workspace")
    price_commands = prices.add_subparsers(dest="prices_command", required=True, metavar="ACTION")
    price_set = price_commands.add_parser(
        "set", parents=[common], help="price a model in USD per million tokens (PROVIDER/MODEL or MODEL)"
    )
    price_set.add_argument("model", help="provider/model, or model for any provider, e.g. openai/my-finetune")
    price_set.add_argument("--input", type=_amount, required=True, help="USD per million input tokens")
    price_set.add_argument("--output", type=_amount, required=True, help="USD per million output tokens")
    price_set.add_argument("--cache-read", type=_amount, help="USD per million cached input tokens read")
    price_set.add_argument("--cache-write", type=_amount, help="USD per million input tokens written to the cache")
    price_remove = price_commands.add_parser("remove", parents=[common], help="remove a model's price")
    price_remove.add_argument("model", help="as given to `prices set`")
    price_list = price_commands.add_parser("list", parents=[common], help="the prices added to a workspace")
    price_list.add_argument("--json", action="store_true", help=json_help)
    price_check = price_commands.add_parser("check", parents=[common], help="how the ledger prices a model")
    price_check.add_argument("provider", help="the provider, as the llm_call event carries it")
    price_check.add_argument("model", help="the model, as the llm_call event carries it")
    price_check.add_argument("--prices", default=None, help="JSON file of price overrides ($AGENT_LEDGER_PRICES)")
    for sub in (price_set, price_remove, price_list, price_check):
        sub.add_argument("--workspace", default="default", help="workspace (default: default)")
    prices.set_defaults(handler=_cmd_prices)

    settings = commands.add_parser("settings", help="show and change a workspace's settings")
    settings_commands = settings.add_subparsers(dest="settings_command", required=True, metavar="ACTION")
    settings_set = settings_commands.add_parser("set", parents=[common], help="change a setting")
    settings_set.add_argument("name", choices=["allow-unpriced-models"], help="the setting")
    settings_set.add_argument("value", help="true or false")
    settings_show = settings_commands.add_parser("show", parents=[common], help="show the settings")
    settings_show.add_argument("--json", action="store_true", help=json_help)
    for sub in (settings_set, settings_show):
        sub.add_argument("--workspace", default="default", help="workspace (default: default)")
    settings.set_defaults(handler=_cmd_settings)

    sessions = commands.add_parser(
        "sessions",
        parents=[common],
        help="list recorded sessions, newest first; sessions delete ID deletes one",
        usage="%(prog)s [--db DB] [--agent AGENT] [--status STATUS] [--user USER] [--tag TAG] [--workspace W]\n"
        "                             [--limit N] [--cursor CURSOR] [--json]\n"
        "       %(prog)s delete SESSION_ID [--db DB] [--workspace W]",
        description="List recorded sessions, newest first (`agent-ledger sessions [filters]`), or delete one "
        "(`agent-ledger sessions delete SESSION_ID`).",
    )
    sessions.add_argument("--agent", help="only this agent")
    sessions.add_argument("--status", choices=["running", "success", "error"], help="only this status")
    sessions.add_argument("--user", help="only this userId")
    sessions.add_argument("--tag", action="append", help="only sessions with this tag (repeat: with every one)")
    sessions.add_argument("--workspace", help="only this workspace")
    sessions.add_argument("--limit", type=int, default=20, help="how many (default: 20)")
    sessions.add_argument(
        "--cursor", type=int, help="continue a listing: the nextCursor that `sessions --json` printed"
    )
    sessions.add_argument("--json", action="store_true", help=json_help + ", with nextCursor")
    session_commands = sessions.add_subparsers(dest="sessions_command", metavar="ACTION")
    session_delete = session_commands.add_parser(
        "delete",
        help="delete a session with its events and reservations (what it spent stays counted)",
        description="Delete a session with its events and reservations, as DELETE /v1/sessions/{id} does. "
        "What it spent still counts against budgets.",
    )
    session_delete.add_argument("session_id", help="the session's id, as `agent-ledger sessions` shows it")
    # SUPPRESS: given before `delete` (sessions --db X delete ID) or after it, neither hides the other.
    session_delete.add_argument("--db", type=_db_path, default=argparse.SUPPRESS, help=db_help)
    session_delete.add_argument("--workspace", default=argparse.SUPPRESS, help="only if it is in this workspace")
    sessions.set_defaults(handler=_cmd_sessions)

    show = commands.add_parser("show", parents=[common], help="a session's timeline with costs")
    show.add_argument("session_id", help="the session's id, or enough of its start to name one session")
    show.add_argument("--json", action="store_true", help=json_help + ": the session with every event")
    show.add_argument(
        "--full", action="store_true", help="after the table, every prompt, response, tool input and output in full"
    )
    show.set_defaults(handler=_cmd_show)

    demo = commands.add_parser("demo", parents=[common], help="run an example agent against a local ledger")
    demo.set_defaults(handler=_cmd_demo)

    parser.set_defaults(default_db=default_db_path)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    """The ``agent-ledger`` console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    args.db_explicit = getattr(args, "db", None)
    if getattr(args, "db", None) is None:
        args.db = args.default_db()
    try:
        return int(args.handler(args))
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # the reader went away (| head): stop quietly
        with contextlib.suppress(OSError, ValueError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # nothing more to flush at exit
        return 1
    except ImportError as exc:
        if "psycopg" in str(exc):  # a postgresql:// --db without the postgres extra
            print(f"agent-ledger: error: {_needs_psycopg(exc)}", file=sys.stderr)
            return 2
        print(
            f"agent-ledger {args.command} needs the server extra ({exc}): pip install 'agent-ledger-sdk[server]'",
            file=sys.stderr,
        )
        return 2
    except (ValueError, OSError, LookupError) as exc:
        print(f"agent-ledger: error: {exc}", file=sys.stderr)
        return 1
    except Exception as exc:
        from .local.records import LedgerError
        from .local.store import MigrationError

        if isinstance(exc, MigrationError):
            print(f"agent-ledger: error: {exc}", file=sys.stderr)
            return 1
        if isinstance(exc, LedgerError):
            print(f"agent-ledger: error: {exc.message}", file=sys.stderr)
            return 1
        if type(exc).__module__.split(".")[0] in ("sqlite3", "psycopg"):  # the database failed the command
            print(f"agent-ledger: error: the database: {_one_line(exc)}", file=sys.stderr)
            return 1
        raise


def _needs_psycopg(exc: ImportError) -> str:
    text = _one_line(exc)
    return (
        text
        if "pip install" in text
        else f"a postgresql:// database needs psycopg 3 ({text}): " + ("pip install 'agent-ledger-sdk[postgres]'")
    )


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

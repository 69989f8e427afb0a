"""Account rows and the configured mailboxes (made through app/store/mailboxes.py) kept in step with
the config, and account passwords.

The config is the truth for which accounts and addresses exist; the database holds what the config
cannot: ids for foreign keys, mailboxes created later, and password hashes (scrypt, RFC 7914).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets

from sqlalchemy import BindParameter, ScalarSelect, select
from sqlalchemy.orm import Session

from app.address import normalize_address
from app.config import Config
from app.db import insert_once
from app.models import Account
from app.store.mailboxes import ensure_mailbox
from app.websessions import end_account_sessions

# scrypt cost: n=2**15, r=8 takes ~32 MiB and ~0.1 s per check on one core: slow for a guesser,
# bearable for a login. The parameters are stored in each hash, so they can be raised later.
SCRYPT_N = 2**15
SCRYPT_R = 8
SCRYPT_P = 1
SCRYPT_MAXMEM = 64 * 1024 * 1024
HASH_SCHEME = "scrypt"


def hash_password(password: str) -> str:
    """`scrypt$n$r$p$<salt b64>$<hash b64>` for the UTF-8 bytes of `password`."""
    salt = secrets.token_bytes(16)
    return _format_hash(salt, _scrypt(password, salt, SCRYPT_N, SCRYPT_R, SCRYPT_P))


def _format_hash(salt: bytes, digest: bytes) -> str:
    return "$".join([HASH_SCHEME, str(SCRYPT_N), str(SCRYPT_R), str(SCRYPT_P), _b64(salt), _b64(digest)])


def password_matches(password: str, stored_hash: str) -> bool:
    """Whether `password` hashes to `stored_hash`; a malformed hash never matches."""
    parts = stored_hash.split("$")
    if len(parts) != 6 or parts[0] != HASH_SCHEME:
        return False
    try:
        n, r, p = (int(x) for x in parts[1:4])
        salt = base64.b64decode(parts[4], validate=True)
        expected = base64.b64decode(parts[5], validate=True)
        actual = _scrypt(password, salt, n, r, p)
    except ValueError:
        return False
    return hmac.compare_digest(actual, expected)


def _scrypt(password: str, salt: bytes, n: int, r: int, p: int) -> bytes:
    return hashlib.scrypt(password.encode("utf-8"), salt=salt, n=n, r=r, p=p, maxmem=SCRYPT_MAXMEM, dklen=32)


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode("ascii")


# What a login without a stored hash is checked against: well-formed, current parameters, random
# salt and digest (no password hashes to it), made once per process at no cost.
_DUMMY_HASH = _format_hash(secrets.token_bytes(16), secrets.token_bytes(32))


def set_password(session: Session, account_name: str, password: str) -> None:
    """Store a new password hash for the account (its row is created if missing) and end its web
    sessions: whoever knew the old password is logged out."""
    account = ensure_account(session, account_name)
    account.password_hash = hash_password(password)
    end_account_sessions(session, account.id)


def verify_password(session: Session, account_name: str, password: str) -> bool:
    """True if the account exists, has a password, and `password` is it. Slow on purpose (scrypt)."""
    return check_password(password, stored_password_hash(session, account_name))


def stored_password_hash(session: Session, account_name: str | None) -> str | None:
    """The account's password hash; None for no account name, an unknown account or no password.
    The query runs even without a name (no account is named ""), so every login costs the same."""
    query = select(Account.password_hash).where(Account.name == (account_name or ""))
    return session.scalar(query) or None


def check_password(password: str, stored_hash: str | None) -> bool:
    """Whether `password` matches; without a hash, False after the same work as a real check (one
    scrypt with the current parameters), so the time taken does not tell which accounts exist."""
    if stored_hash is None:
        password_matches(password, _DUMMY_HASH)
        return False
    return password_matches(password, stored_hash)


def ensure_account(session: Session, name: str) -> Account:
    """The account row with this name, created (and flushed, so it has an id) if missing."""
    account = session.scalar(select(Account).where(Account.name == name))
    if account is None:
        account = Account(name=name)
        if not insert_once(session, account):
            account = session.scalars(select(Account).where(Account.name == name)).one()
    return account


def find_account(session: Session, name: str) -> Account | None:
    return session.scalar(select(Account).where(Account.name == name))


def account_id_subquery(name: str | BindParameter[str]) -> ScalarSelect[int]:
    """The id of the account with this name (or the name bound at execution), as a subquery: the
    owners of other tables look a row up by account name in one statement (the inbound path does,
    for every message)."""
    return select(Account.id).where(Account.name == name).scalar_subquery()


def account_names(session: Session) -> list[str]:
    """Every account name in the database, sorted (what a command lists when one is not found)."""
    return list(session.scalars(select(Account.name).order_by(Account.name)))


def account_id(session: Session, name: str) -> int:
    """The id of an account known to exist (NoResultFound otherwise)."""
    return session.scalars(select(Account.id).where(Account.name == name)).one()


def account_name(session: Session, account_id: int) -> str | None:
    """The name of the account with this id; None if there is none."""
    return session.scalar(select(Account.name).where(Account.id == account_id))


def configured_mailboxes(config: Config) -> dict[str, set[str]]:
    """Every mailbox the config names, per account: Inbox, Junk, Rejects, ruleset and special targets."""
    names: dict[str, set[str]] = {}
    for account_name, account in config.accounts.items():
        wanted = {account.inbox, account.junk_mailbox, account.rejects_mailbox}
        for ruleset in account.rulesets:
            wanted.add(ruleset.mailbox)
            if ruleset.accept_rejects_to_mailbox:
                wanted.add(ruleset.accept_rejects_to_mailbox)
        names[account_name] = wanted
    for account_name, mailbox in config.address_index.values():
        names[account_name].add(mailbox)
    return names


def sync_from_config(session: Session, config: Config) -> None:
    """Create the rows for every configured account and mailbox that has none yet (never deletes)."""
    for account_name, mailboxes in configured_mailboxes(config).items():
        account = ensure_account(session, account_name)
        for mailbox in sorted(mailboxes):
            ensure_mailbox(session, account.id, mailbox)


def account_for_login(config: Config, login: str) -> str | None:
    """The configured account a submission login names: the account name itself, or one of its addresses."""
    if login in config.accounts:
        return login
    target = config.account_for_address(login)
    if target is None:
        return None
    account_name = target[0]
    # Only an account's own addresses log in, not the special addresses routed to it.
    return account_name if owns_address(config, account_name, login) else None


def owns_address(config: Config, account_name: str, address: str) -> bool:
    """Whether `address` is one of the account's configured addresses (domain compared case-insensitively)."""
    account = config.accounts.get(account_name)
    return account is not None and normalize_address(address) in account.addresses

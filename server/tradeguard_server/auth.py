"""Who may do what: the admin token, trader credentials, and the files they live in.

The bot is not trusted with its own guard. AdminService (flags, limits, breakers, pauses) always needs the
admin token: a configured one (`admin_token`, `admin_token_file`) or, by default, one created at first start
in `<state_dir>/admin.token` (owner-only). Only `dev_open_admin` opens it, loudly.

RiskService needs a credential once any trader credential is configured: the shared `trader_token` (any
trader) or the per-bot tokens of `credentials_file`, each naming the trader ids and accounts it may act for.
The admin token is accepted there too (the operator may act for any trader). Tokens are looked up by their
SHA-256 digest, so the time a lookup takes says nothing about how much of a token was right.

Token and credentials files are re-read when they change (`reload_if_changed`); a change that does not
load (an empty file, a token too short) is logged and the credentials in force stay.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import secrets
import stat
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .settings import Settings, SettingsError

log = logging.getLogger("tradeguard.auth")

MIN_TOKEN_CHARS = 16
ADMIN_TOKEN_NAME = "admin.token"  # noqa: S105 - a file name
ANY = "*"


class CredentialError(SettingsError):
    """A token or credentials file that cannot be used."""


def check_token(what: str, raw: str) -> str:
    """`raw` stripped of surrounding whitespace (env and file alike), or CredentialError when it is unusable."""
    token = raw.strip()
    if not token:
        raise CredentialError(f"{what}: is empty")
    if any(ch.isspace() for ch in token):
        raise CredentialError(f"{what}: must not contain whitespace")
    if len(token) < MIN_TOKEN_CHARS:
        raise CredentialError(f"{what}: too short ({len(token)} characters, at least {MIN_TOKEN_CHARS})")
    return token


def shared_with_others(path: Path) -> bool:
    """True when others may read or write the file, or its group may write it. (Group read is how Kubernetes
    gives a secret to a non-root container: fsGroup; it is not warned about.)"""
    try:
        return bool(path.stat().st_mode & (stat.S_IRWXO | stat.S_IWGRP))
    except OSError:
        return False


def read_token_file(what: str, path: Path) -> str:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise CredentialError(f"{what}: file {path} does not exist") from None
    except OSError as exc:
        raise CredentialError(f"{what}: cannot read {path} ({exc.strerror})") from None
    except UnicodeDecodeError:
        raise CredentialError(f"{what}: {path} is not UTF-8 text") from None
    if shared_with_others(path):
        log.warning("%s: %s is readable by others (mode %o); make it owner-only: chmod 600 %s",
                    what, path, stat.S_IMODE(path.stat().st_mode), path)
    return check_token(f"{what} ({path})", text)


def create_private_file(path: Path) -> bool:
    """Create `path` empty with mode 0600 if it does not exist (True when created); warn when it is shared."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        if shared_with_others(path):
            log.warning("%s is readable by others (mode %o): it holds every trader's state; "
                        "chmod 600 %s", path, stat.S_IMODE(path.stat().st_mode), path)
        return False
    os.close(fd)
    return True


def state_dir(settings: Settings) -> Path:
    """Where the generated admin token lives: `state_dir`, else the SQLite file's directory, else ".". """
    if settings.state_dir:
        return Path(settings.state_dir)
    db = sqlite_path(settings.database_url)
    return db.parent if db is not None else Path(".")


def sqlite_path(url: str) -> Path | None:
    """The file of a `sqlite:///path.db` URL (None for memory, PostgreSQL or anything else)."""
    from .store.url import is_sqlite

    try:
        if not is_sqlite(url):
            return None
    except ValueError:
        return None
    from sqlalchemy.engine import make_url

    database = make_url(url).database
    return Path(database) if database and database != ":memory:" else None


def admin_token_path(settings: Settings) -> Path | None:
    """The admin token's file: the configured one, or the generated one (None when the token is given inline)."""
    if settings.admin_token:
        return None
    if settings.admin_token_file:
        return Path(settings.admin_token_file)
    return state_dir(settings) / ADMIN_TOKEN_NAME


def ensure_admin_token(path: Path) -> bool:
    """Create the admin token file (owner-only, 43 random characters) unless it exists. True when created."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return False
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(secrets.token_urlsafe(32) + "\n")
    return True


@dataclass(frozen=True, slots=True)
class Principal:
    """Who a credential speaks for. `traders` / `accounts` None = any."""

    name: str
    traders: frozenset[str] | None = None
    accounts: frozenset[str] | None = None
    admin: bool = False

    @property
    def restricted(self) -> bool:
        return self.traders is not None or self.accounts is not None

    def may_act_for(self, trader_id: str, account_id: str) -> bool:
        return ((self.traders is None or trader_id in self.traders)
                and (self.accounts is None or account_id in self.accounts))


ADMIN = Principal("admin", admin=True)
SHARED_TRADER = Principal("shared trader token")


def digest(token: bytes) -> bytes:
    return hashlib.sha256(token).digest()


@dataclass(frozen=True, slots=True)
class Table:
    """The credentials in force: token digests to principals."""

    by_digest: dict[bytes, Principal] = field(default_factory=dict)
    by_identity: dict[str, Principal] = field(default_factory=dict)  # mTLS client certificate CN -> principal
    admin_open: bool = False  # dev_open_admin: AdminService answers anyone
    trader_auth: bool = False  # RiskService needs a credential

    def lookup(self, token: bytes) -> Principal | None:
        return self.by_digest.get(digest(token))


def _names(entry: dict[str, Any], key: str, where: str) -> frozenset[str] | None:
    value = entry.get(key)
    if not isinstance(value, list) or not value or not all(isinstance(v, str) and v for v in value):
        raise CredentialError(f"{where}: {key} must be a non-empty list of ids (\"*\" = any)")
    return None if ANY in value else frozenset(value)


def credential_token_files(path: Path) -> list[Path]:
    """The token files a credentials file names (watched for changes too); [] when it does not load."""
    try:
        entries = tomllib.loads(path.read_text(encoding="utf-8")).get("credential")
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError):
        return []
    if not isinstance(entries, list):
        return []
    return [path.parent / e["token_file"] for e in entries
            if isinstance(e, dict) and isinstance(e.get("token_file"), str)]


@dataclass(frozen=True, slots=True)
class Entry:
    """One `[[credential]]`: a token, a TLS client identity (certificate CN under mTLS), or both."""

    token: str | None
    tls_identity: str | None
    principal: Principal


def load_credentials_file(path: Path) -> list[Entry]:
    """The `[[credential]]` entries of the TOML file."""
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CredentialError(f"credentials_file: {path} does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise CredentialError(f"credentials_file: cannot read {path} ({exc})") from None
    except tomllib.TOMLDecodeError as exc:
        raise CredentialError(f"credentials_file: {path} is not valid TOML ({exc})") from None
    entries = data.get("credential")
    if not isinstance(entries, list) or not entries:
        raise CredentialError(f"credentials_file: {path} has no [[credential]] table")
    if shared_with_others(path):
        log.warning("credentials_file: %s is readable by others; chmod 600 %s", path, path)
    out: list[Entry] = []
    seen: set[str] = set()
    for i, entry in enumerate(entries):
        name = entry.get("name")
        where = f"credentials_file {path}, credential[{i}]"
        if not isinstance(name, str) or not name:
            raise CredentialError(f"{where}: name is required")
        if name in seen:
            raise CredentialError(f"{where}: name {name!r} is used twice")
        seen.add(name)
        where = f"credentials_file {path}, credential {name!r}"
        token: str | None = None
        if isinstance(entry.get("token_file"), str):
            token = read_token_file(where, path.parent / entry["token_file"])
        elif isinstance(entry.get("token"), str):
            token = check_token(f"{where}: token", entry["token"])
        identity = entry.get("tls_identity")
        if identity is not None and (not isinstance(identity, str) or not identity.strip()):
            raise CredentialError(f"{where}: tls_identity must be a client certificate's common name")
        if token is None and identity is None:
            raise CredentialError(f"{where}: give token_file (or token), or tls_identity (with mTLS)")
        principal = Principal(name, _names(entry, "traders", where), _names(entry, "accounts", where))
        out.append(Entry(token, identity, principal))
    return out


class Credentials:
    """The credentials of these settings, re-read when their files change."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        path = None if settings.dev_open_admin else admin_token_path(settings)
        self.admin_path = None if path is None else path.absolute()  # logged: a path that works from anywhere
        self.generated = False
        if settings.dev_open_admin and (settings.admin_token or settings.admin_token_file):
            raise CredentialError("dev_open_admin: an admin token is configured as well; choose one")
        if self.admin_path is not None and not settings.admin_token_file:
            try:
                self.generated = ensure_admin_token(self.admin_path)
            except OSError as exc:
                raise CredentialError(f"admin token: cannot create {self.admin_path} ({exc.strerror}); set "
                                      "--state-dir to a writable directory, or --admin-token-file") from None
        self.admin_token = ""
        self.table = self._load()
        self._seen = self._signature()

    @property
    def files(self) -> list[Path]:
        s = self.settings
        paths = [self.admin_path] if self.admin_path is not None else []
        paths += [Path(p) for p in (s.trader_token_file, s.credentials_file) if p]
        if s.credentials_file:
            paths += credential_token_files(Path(s.credentials_file))
        return paths

    def _signature(self) -> tuple[tuple[int, int, int], ...]:
        sig = []
        for path in self.files:
            try:
                st = path.stat()
                sig.append((st.st_ino, st.st_mtime_ns, st.st_size))
            except OSError:
                sig.append((0, 0, 0))
        return tuple(sig)

    def _load(self) -> Table:
        s = self.settings
        pairs: list[tuple[str, Principal]] = []
        admin = ""
        if s.admin_token:
            admin = check_token("admin_token", s.admin_token)
        elif self.admin_path is not None:
            admin = read_token_file("admin token", self.admin_path)
        if admin:
            pairs.append((admin, ADMIN))
        if s.trader_token and s.trader_token_file:
            raise CredentialError("trader_token and trader_token_file: give one")
        if s.trader_token:
            pairs.append((check_token("trader_token", s.trader_token), SHARED_TRADER))
        elif s.trader_token_file:
            pairs.append((read_token_file("trader_token_file", Path(s.trader_token_file)), SHARED_TRADER))
        by_identity: dict[str, Principal] = {}
        if s.credentials_file:
            entries = load_credentials_file(Path(s.credentials_file))
            if not s.tls_client_ca and any(e.tls_identity for e in entries):
                raise CredentialError("credentials_file: tls_identity needs mTLS (tls_client_ca)")
            for entry in entries:
                if entry.token is not None:
                    pairs.append((entry.token, entry.principal))
                if entry.tls_identity is not None:
                    if entry.tls_identity in by_identity:
                        raise CredentialError(f"credentials_file: tls_identity {entry.tls_identity!r} is used twice")
                    by_identity[entry.tls_identity] = entry.principal
        by_digest: dict[bytes, Principal] = {}
        for token, principal in pairs:
            key = digest(token.encode())
            other = by_digest.get(key)
            if other is not None:
                if ADMIN in (other, principal):
                    raise CredentialError("the admin token equals a trader token: the bot would hold the admin "
                                          "credential; give them different values")
                raise CredentialError(f"credentials {other.name!r} and {principal.name!r} share one token")
            by_digest[key] = principal
        self.admin_token = admin
        return Table(by_digest, by_identity, admin_open=s.dev_open_admin,
                     trader_auth=len(pairs) > (1 if admin else 0) or bool(by_identity))

    def reload_if_changed(self) -> bool:
        """Re-read the files when one changed; True when new credentials are in force."""
        sig = self._signature()
        if sig == self._seen:
            return False
        self._seen = sig
        try:
            table = self._load()
        except CredentialError as exc:
            log.error("credentials changed but not loaded, the previous ones stay in force: %s", exc)
            return False
        self.table = table
        log.warning("credentials re-read: %s", "; ".join(line for _, line in self.describe()))
        return True

    def tokens(self) -> list[str]:
        """Every token in force (for the log scrubber; never logged)."""
        s = self.settings
        found = [self.admin_token, s.trader_token.strip()]
        paths = [Path(p) for p in (s.trader_token_file,) if p]
        for path in paths:
            with contextlib.suppress(OSError, UnicodeDecodeError):
                found.append(path.read_text(encoding="utf-8").strip())
        if s.credentials_file:
            with contextlib.suppress(CredentialError):
                found += [e.token for e in load_credentials_file(Path(s.credentials_file)) if e.token]
        return [t for t in found if t]

    def describe(self) -> list[tuple[int, str]]:
        """(log level, line): what is guarded and how, for the start-up log (never a token). Anything open is
        a WARNING."""
        table, s = self.table, self.settings
        lines: list[tuple[int, str]] = []
        if table.admin_open:
            lines.append((logging.WARNING, "AdminService OPEN TO ANY CALLER (dev_open_admin): DEVELOPMENT ONLY, the "
                          "bot can lift its own pause and switch enforcement off"))
        elif s.admin_token:
            lines.append((logging.INFO, "AdminService needs the admin token (admin_token)"))
        else:
            how = "created now" if self.generated else "file"
            lines.append((logging.INFO, f"AdminService needs the admin token in {self.admin_path} ({how}); e.g. "
                          f"grpcurl -H \"authorization: Bearer $(cat {self.admin_path})\" or tradeguard admin "
                          "GetFeatureFlags"))
        principals = [p for p in table.by_digest.values() if not p.admin] + list(table.by_identity.values())
        if not table.trader_auth:
            lines.append((logging.WARNING, "RiskService open: no trader credentials, so ANY caller may report, ask "
                          "and watch for ANY trader (configure credentials_file for per-bot tokens)"))
        else:
            named = sorted(p.name for p in principals if p.restricted)
            shared = any(not p.restricted for p in principals)
            lines.append((logging.INFO, "RiskService needs a credential: " + ", ".join(
                ([f"{len(named)} per-bot ({', '.join(named)})"] if named else [])
                + (["the shared trader token (any trader)"] if shared else []))))
        return lines

"""Who is acting, as something authenticated them (docs/design.md, "Trust").

- Team mode (PostgreSQL): the database session user, `current_user`, which the server
  authenticated (password, certificate, peer). A user cannot claim another role's name.
- Locally (SQLite): the operating-system user running the process.
- With a signing key configured (`signing_key` in registry.toml or $REGISTRY_SIGNING_KEY):
  also the key's identity (`key:<16 hex>`); what this user records is signed with it, so
  anyone holding the public key can check the claim later.

`--actor` / $REGISTRY_ACTOR only add a display name shown beside the identity. A policy's
`actors` match the user name or the key identity, never the display name.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

from registry import config, keys

if TYPE_CHECKING:
    from registry.keys import SigningKey
    from registry.repo import Registry


@dataclass(frozen=True)
class Identity:
    user: str  # authenticated: the PostgreSQL role, or the OS user
    source: str  # "postgresql" or "os"
    key: SigningKey | None = field(default=None, compare=False)
    display: str = ""

    @property
    def signer(self) -> str | None:
        return self.key.id if self.key is not None else None

    def names(self) -> set[str]:
        """The names a policy's `actors` may list that this identity satisfies."""
        return {self.user} | ({self.key.id} if self.key is not None else set())

    def describe(self) -> str:
        text = self.user + (f" ({self.key.id})" if self.key is not None else "")
        shown = self.display and self.display != self.user
        return text + (f' as "{self.display}"' if shown else "")


def authenticated_user(reg: Registry) -> tuple[str, str]:
    """(user, source): the PostgreSQL session's `current_user`, else the OS user."""
    if not reg.cfg.sqlite:
        with reg.db.read() as conn:
            return str(conn.execute("SELECT current_user").scalar()), "postgresql"
    return config.os_user(), "os"


def resolve(reg: Registry, display: str | None = None) -> Identity:
    """The identity of this process against `reg`, with an optional display name."""
    user, source = authenticated_user(reg)
    key = keys.configured(reg.cfg.signing_key)
    return Identity(user, source, key, config.display_name(display))


def of(reg: Registry, actor: str | Identity | None = None) -> Identity:
    """The identity to record for a call that names `actor`: an Identity as given, else
    this process's authenticated identity with `actor` as its display name."""
    if isinstance(actor, Identity):
        return actor
    base = reg.whoami
    return replace(base, display=config.display_name(actor))

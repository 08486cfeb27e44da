"""Console sessions ended by logout (the `revoked_sessions` table): a session cookie is signed
and carries its own expiry, so without this record a copied cookie would keep working after
its owner signed out, until it expired. Shared by every API replica through the database."""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import delete, select

from service.storage.db import Database
from service.storage.tables import RevokedSession, utcnow


def revoke(database: Database, nonce: str, expires: int) -> None:
    """Refuse the session `nonce` until `expires` (seconds since the epoch, its own expiry).
    Rows past their expiry are dropped here: logouts are what add rows, so the table holds
    at most the sessions ended within the last SESSION_SECONDS."""
    with database.session(write=True) as session:
        session.execute(delete(RevokedSession).where(RevokedSession.expires_at <= utcnow()))
        session.merge(RevokedSession(nonce=nonce, expires_at=datetime.fromtimestamp(expires, UTC)))


def is_revoked(database: Database, nonce: str) -> bool:
    with database.session() as session:
        found = session.scalar(select(RevokedSession.nonce).where(RevokedSession.nonce == nonce))
        return found is not None

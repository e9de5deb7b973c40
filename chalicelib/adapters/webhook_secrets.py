"""Each owner's webhook secret version in the SQL database (the secret itself is derived from it and
the stage's master secret: service.notifications_secrets)."""

from __future__ import annotations

from collections.abc import Callable

from chalicelib.adapters.database import Database, IntegrityError, epoch_ms

NO_OWNER = ""  # an unscoped stack's callers share one secret


class WebhookSecretRepository:
    def __init__(self, db: Database, clock: Callable[[], int] = epoch_ms) -> None:
        self._db = db
        self._clock = clock

    def current(self, owner: str | None) -> tuple[int, int | None]:
        """(version, rotated_at); an owner who never rotated has version 1 and no rotation time."""
        row = self._db.fetchone("SELECT version, rotated_at FROM webhook_secrets WHERE owner = ?", (owner or NO_OWNER,))
        return (1, None) if row is None else (int(row["version"]), int(row["rotated_at"]))

    def rotate(self, owner: str | None) -> int:
        """Move the owner to the next version; the new version."""
        key, now = owner or NO_OWNER, self._clock()
        with self._db.transaction():
            if self._db.execute(
                "UPDATE webhook_secrets SET version = version + 1, rotated_at = ? WHERE owner = ?", (now, key)
            ):
                return self.current(owner)[0]
            try:
                self._db.execute(
                    "INSERT INTO webhook_secrets (owner, version, rotated_at) VALUES (?, ?, ?)", (key, 2, now)
                )
            except IntegrityError:  # a concurrent first rotation won: rotate once more, past it
                self._db.execute(
                    "UPDATE webhook_secrets SET version = version + 1, rotated_at = ? WHERE owner = ?", (now, key)
                )
            return self.current(owner)[0]

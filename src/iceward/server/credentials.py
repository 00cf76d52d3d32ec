"""The credentials a server verifies: static users and secrets from the plan, merged with the
data store's, re-read when the store's revision moves.

Every relaying process holds one :class:`CredentialSync` (and so does the supervisor, which
mints): all of them read the same store, so all of them agree on users and secrets.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from iceward.config import ensure_secret
from iceward.server.plan import ServerPlan
from iceward.store import (
    STORE_FAILURES,
    Store,
    StoreUnavailable,
    database_url,
    describe_failure,
    sqlite_path,
)
from iceward.turn.auth import CredentialStore

log = logging.getLogger("iceward.server")


def open_store(plan: ServerPlan) -> Store:
    """The data store the settings name; OSError naming it when it cannot be opened."""
    url = database_url(plan.data_dir, plan.settings.database)
    try:
        return Store(url, key_grace=plan.settings.api_key_grace)
    except StoreUnavailable as exc:  # its message names the store already
        raise OSError(f"cannot open the data store: {exc}") from None
    except STORE_FAILURES as exc:
        where = sqlite_path(url) or "--database"
        raise OSError(f"cannot open the data store {where}: {describe_failure(exc)}") from None


class CredentialSync:
    """A :class:`CredentialStore` kept in step with the plan and the data store."""

    def __init__(self, plan: ServerPlan) -> None:
        settings = plan.settings
        self.credentials = CredentialStore(settings.realm, settings.max_credential_ttl)
        for user in plan.users:
            if isinstance(user.secret, bytes):
                self.credentials.add_user_key(user.name, user.secret)
            else:
                self.credentials.add_user(user.name, user.secret)
        secrets = list(plan.secrets)
        if plan.generate_secret:
            secrets = [ensure_secret(plan.data_dir)]
        self.config_secrets = secrets
        self._config_users = self.credentials.user_keys()
        self.credentials.set_secrets(secrets)
        self._realm = settings.realm
        self._revision = -1
        self._db_secrets: list[str] = []

    async def refresh(
        self, store: Store, before_reload: Callable[[], Awaitable[None]] | None = None
    ) -> None:
        """Re-read users and secrets when the store's revision changed; ``before_reload`` runs
        first (the supervisor has its workers reload before it mints with a new secret)."""
        loop = asyncio.get_running_loop()
        revision = await loop.run_in_executor(None, store.revision)
        if revision == self._revision:
            return
        if before_reload is not None:
            await before_reload()
        users, secrets = await loop.run_in_executor(
            None, lambda: (store.list_users(), store.list_secrets())
        )
        merged = dict(self._config_users)
        for user in users:
            if user.realm != self._realm:
                log.warning(
                    "user %r in the store has keys for realm %r, not %r: ignored",
                    user.name,
                    user.realm,
                    self._realm,
                )
            else:
                keys = {1: user.md5_key}
                if user.sha256_key is not None:
                    keys[2] = user.sha256_key
                merged[user.name] = keys
        self.credentials.load_users(merged)
        self._db_secrets = [s.value for s in secrets if s.retired_at is None]
        self.credentials.set_secrets([*self._db_secrets[::-1], *self.config_secrets])
        self._revision = revision

    def minting_secret(self) -> str | None:
        """The secret new credentials are signed with: the newest in the store, else the first."""
        if self._db_secrets:
            return self._db_secrets[-1]
        return self.config_secrets[0] if self.config_secrets else None


async def refresh_logged(store: Store, refresh: Callable[[], Awaitable[None]]) -> None:
    """One second's work on the store: ``refresh`` (users and secrets), its failure logged once
    (and its recovery once) by the store's health, which readiness and the API share; the
    process goes on with the users and secrets it has."""
    try:
        await refresh()
        store.health.ok()
    except STORE_FAILURES as exc:
        store.health.failed(exc)
    except Exception as exc:  # a store hiccup must not stop the server
        log.error("store refresh failed: %s", exc)

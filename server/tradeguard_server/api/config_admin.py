"""AdminService SaveConfig / GetConfig / ListConfigs / DeleteConfig.

Write-through: the store commits first; only then does the in-memory copy (and the engine's limits)
change, so a failed write never leaves the sidecar enforcing something the store does not hold.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

import grpc
from google.protobuf.message import Message

from tradeguard.v1 import admin_service_pb2 as ad
from tradeguard.v1 import types_pb2 as t

from ..engine.engine import RiskEngine
from ..engine.limits import Limits
from . import convert
from .config_rules import limits_from_config, validate_config
from .errors import NotFound
from .risk_service import RiskService
from .validation import Violations

log = logging.getLogger("tradeguard.admin")
Ctx = grpc.aio.ServicerContext[Any, Any]
Handlers = dict[str, tuple[type[Message], Callable[[Any, Ctx], Awaitable[Message]]]]


class ConfigPersistence(Protocol):
    """What configuration admin needs from the store (raises api.errors.Unavailable when it is down)."""

    async def save(self, cfg: t.RiskConfiguration) -> tuple[t.RiskConfiguration, bool]: ...

    async def delete(self, account_id: str, config_id: str) -> None: ...


class MemoryConfigPersistence:
    """Persistence off: nothing to write; timestamps are set here."""

    def __init__(self, engine: RiskEngine) -> None:
        self.engine = engine

    async def save(self, cfg: t.RiskConfiguration) -> tuple[t.RiskConfiguration, bool]:
        saved = t.RiskConfiguration()
        saved.CopyFrom(cfg)
        now = convert.ts(self.engine.clock.now())
        saved.updated_at.CopyFrom(now)
        if not saved.HasField("created_at"):
            saved.created_at.CopyFrom(now)
        return saved, False

    async def delete(self, account_id: str, config_id: str) -> None:
        return None


def caller(ctx: Ctx) -> str:
    """Who made an admin call, for the audit trail (the peer; never the token)."""
    peer = ctx.peer() if ctx is not None else ""
    return peer or "unknown"


class ConfigAdmin:
    """Holds every account's configurations in memory, mirrored in the store."""

    def __init__(self, engine: RiskEngine, risk: RiskService, persistence: ConfigPersistence) -> None:
        self.engine = engine
        self.risk = risk
        self.persistence = persistence
        self.configs: dict[str, dict[str, t.RiskConfiguration]] = {}

    def handlers(self) -> Handlers:
        return {
            "SaveConfig": (ad.SaveConfigRequest, self.save_config),
            "GetConfig": (ad.GetConfigRequest, self.get_config),
            "ListConfigs": (ad.ListConfigsRequest, self.list_configs),
            "DeleteConfig": (ad.DeleteConfigRequest, self.delete_config),
        }

    def load(self, configs: list[t.RiskConfiguration]) -> None:
        """Install configurations loaded from the store at start (no history rows)."""
        for cfg in configs:
            self.configs.setdefault(cfg.account_id, {})[cfg.config_id] = cfg
        for account_id, by_id in self.configs.items():
            active = next((c for c in by_id.values() if c.is_active), None)
            if active is not None:
                self.engine.set_account_limits(account_id, self._limits(active))

    def _limits(self, cfg: t.RiskConfiguration) -> Limits:
        return limits_from_config(cfg, self.engine.defaults)

    def _activate(self, account_id: str, reason: str) -> None:
        by_id = self.configs.get(account_id, {})
        active = next((c for c in by_id.values() if c.is_active), None)
        changed = self.engine.apply_limits(account_id, None if active is None else self._limits(active), reason)
        for st in changed:
            self.risk.notify(st, reason)

    # ---- RPCs -----------------------------------------------------------------------------------

    async def save_config(self, req: ad.SaveConfigRequest, ctx: Ctx) -> ad.SaveConfigResponse:
        v = Violations()
        if not req.HasField("config"):
            v.add("config", "required")
        else:
            validate_config(v, req.config)
        v.raise_if_any()
        cfg = req.config
        existing = self.configs.get(cfg.account_id, {}).get(cfg.config_id)
        if existing is not None and existing.HasField("created_at"):
            cfg.created_at.CopyFrom(existing.created_at)
        saved, created = await self.persistence.save(cfg)
        created = created or existing is None
        by_id = self.configs.setdefault(cfg.account_id, {})
        if saved.is_active:
            for other in by_id.values():
                other.is_active = False
        by_id[saved.config_id] = saved
        what = "created" if created else "updated"
        active = " (active)" if saved.is_active else ""
        reason = f"config {saved.config_id} {what}{active} by {caller(ctx)}"
        log.warning("risk configuration %s/%s %s%s by %s", saved.account_id, saved.config_id, what, active,
                    caller(ctx))
        if saved.is_active or (existing is not None and existing.is_active):
            self._activate(saved.account_id, reason)
        return ad.SaveConfigResponse(config=saved, created=created)

    def _find(self, account_id: str, config_id: str) -> t.RiskConfiguration:
        v = Violations()
        v.identifier("account_id", account_id)
        v.identifier("config_id", config_id)
        v.raise_if_any()
        cfg = self.configs.get(account_id, {}).get(config_id)
        if cfg is None:
            raise NotFound(f"no configuration {config_id!r} for account {account_id!r}")
        return cfg

    async def get_config(self, req: ad.GetConfigRequest, _ctx: Ctx) -> ad.GetConfigResponse:
        return ad.GetConfigResponse(config=self._find(req.account_id, req.config_id))

    async def list_configs(self, req: ad.ListConfigsRequest, _ctx: Ctx) -> ad.ListConfigsResponse:
        v = Violations()
        v.identifier("account_id", req.account_id)
        v.raise_if_any()
        by_id = self.configs.get(req.account_id, {})
        return ad.ListConfigsResponse(configs=[by_id[k] for k in sorted(by_id)])

    async def delete_config(self, req: ad.DeleteConfigRequest, ctx: Ctx) -> ad.DeleteConfigResponse:
        cfg = self._find(req.account_id, req.config_id)
        await self.persistence.delete(req.account_id, req.config_id)
        del self.configs[req.account_id][req.config_id]
        log.warning("risk configuration %s/%s deleted by %s", req.account_id, req.config_id, caller(ctx))
        if cfg.is_active:
            self._activate(req.account_id, f"config {req.config_id} deleted by {caller(ctx)}; defaults apply")
        return ad.DeleteConfigResponse()

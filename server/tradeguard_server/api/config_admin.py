"""AdminService SaveConfig / GetConfig / ListConfigs / DeleteConfig: requests validated and converted for the
configuration service (services/configs.py), its records answered as RiskConfiguration messages."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import grpc
from google.protobuf.message import Message

from tradeguard.v1 import admin_service_pb2 as ad
from tradeguard.v1 import types_pb2 as t

from ..services.configs import ConfigService
from . import convert
from .config_records import config_msg, to_record
from .config_rules import validate_config
from .errors import store_errors
from .masks import apply_mask, check_mask, partial
from .validation import Violations

Ctx = grpc.aio.ServicerContext[Any, Any]
Handlers = dict[str, tuple[type[Message], Callable[[Any, Ctx], Awaitable[Message]]]]
# update_mask: the configuration's identity and the server's timestamps change nothing; every other field may.
CONFIG_MASK_IGNORED = frozenset({"account_id", "config_id", "created_at", "updated_at"})
CONFIG_MASK_PATHS = frozenset(t.RiskConfiguration.DESCRIPTOR.fields_by_name) - CONFIG_MASK_IGNORED


class ConfigAdmin:
    """Handlers of the configuration RPCs."""

    def __init__(self, service: ConfigService) -> None:
        self.service = service

    def handlers(self) -> Handlers:
        return {
            "SaveConfig": (ad.SaveConfigRequest, self.save_config),
            "GetConfig": (ad.GetConfigRequest, self.get_config),
            "ListConfigs": (ad.ListConfigsRequest, self.list_configs),
            "DeleteConfig": (ad.DeleteConfigRequest, self.delete_config),
        }

    # ---- RPCs -----------------------------------------------------------------------------------

    async def save_config(self, req: ad.SaveConfigRequest, ctx: Ctx) -> ad.SaveConfigResponse:
        """Create or replace; with an update_mask (AIP-134) change only the named fields of an existing one. The
        result is validated as a whole, as a replacement would be."""
        v = Violations()
        if not req.HasField("config"):
            v.add("config", "required")
            v.raise_if_any()
        cfg = req.config
        if partial(req.update_mask):
            check_mask(v, req.update_mask, CONFIG_MASK_PATHS, CONFIG_MASK_IGNORED)
            v.identifier("config.account_id", cfg.account_id)
            v.identifier("config.config_id", cfg.config_id)
            v.raise_if_any()
            with store_errors():
                stored = config_msg(self.service.get(cfg.account_id, cfg.config_id))
            cfg = apply_mask(stored, cfg, req.update_mask, CONFIG_MASK_IGNORED)
        else:
            check_mask(v, req.update_mask, CONFIG_MASK_PATHS, CONFIG_MASK_IGNORED)
        validate_config(v, cfg)
        v.raise_if_any()
        with store_errors("configuration"):
            saved, created = await self.service.save(to_record(cfg), convert.caller(ctx),
                                                      regimes_given=cfg.HasField("market_regime_thresholds"))
        return ad.SaveConfigResponse(config=config_msg(saved), created=created)

    async def get_config(self, req: ad.GetConfigRequest, _ctx: Ctx) -> ad.GetConfigResponse:
        _check_ids(req.account_id, req.config_id)
        with store_errors():
            return ad.GetConfigResponse(config=config_msg(self.service.get(req.account_id, req.config_id)))

    async def list_configs(self, req: ad.ListConfigsRequest, _ctx: Ctx) -> ad.ListConfigsResponse:
        v = Violations()
        v.identifier("account_id", req.account_id)
        v.raise_if_any()
        return ad.ListConfigsResponse(configs=[config_msg(c) for c in self.service.in_account(req.account_id)])

    async def delete_config(self, req: ad.DeleteConfigRequest, ctx: Ctx) -> ad.DeleteConfigResponse:
        _check_ids(req.account_id, req.config_id)
        with store_errors("configuration deletion"):
            await self.service.delete(req.account_id, req.config_id, convert.caller(ctx))
        return ad.DeleteConfigResponse()


def _check_ids(account_id: str, config_id: str) -> None:
    v = Violations()
    v.identifier("account_id", account_id)
    v.identifier("config_id", config_id)
    v.raise_if_any()

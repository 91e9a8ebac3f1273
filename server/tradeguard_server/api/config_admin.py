"""AdminService SaveConfig / GetConfig / ListConfigs / DeleteConfig: requests validated and converted for the
configuration service (services/configs.py), its records answered as RiskConfiguration messages."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import grpc
from google.protobuf.message import Message

from tradeguard.v1 import admin_service_pb2 as ad

from ..services.configs import ConfigService
from . import convert
from .config_records import config_msg, to_record
from .config_rules import validate_config
from .errors import store_errors
from .validation import Violations

Ctx = grpc.aio.ServicerContext[Any, Any]
Handlers = dict[str, tuple[type[Message], Callable[[Any, Ctx], Awaitable[Message]]]]


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
        v = Violations()
        if not req.HasField("config"):
            v.add("config", "required")
        else:
            validate_config(v, req.config)
        v.raise_if_any()
        with store_errors("configuration"):
            saved, created = await self.service.save(to_record(req.config), convert.caller(ctx),
                                                      regimes_given=req.config.HasField("market_regime_thresholds"))
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

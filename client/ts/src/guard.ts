// What every TypeScript bot needs around the generated RiskServiceClient: channel options that reconnect
// quickly after a sidecar restart, and a canTrade that always resolves to a decision (fail closed), makes a
// client_order_id before the call, and denies any answer a TradeGuard server cannot send.
//
//   const client = new RiskServiceClient(addr, credentials.createInsecure(), CHANNEL_OPTIONS);
//   const { decision } = await canTrade(client, CanTradeRequest.fromPartial({ ... }), 500);
//   if (decision.allowed) { /* place the order */ }
//
// An allowed order counts as exposure until the bot reports what happened to it, under the decision's
// clientOrderId, with the generated client's reportOrder (FILLED, CANCELLED, REJECTED, ...). cancelAllOrders
// reads the kill switch's cancel_all_orders action from any answer's actions.

import { randomBytes } from "node:crypto";

import { type ChannelOptions, Metadata, type ServiceError, status } from "@grpc/grpc-js";

import { CanTradeRequest, CanTradeResponse, type RiskServiceClient } from "./tradeguard/v1/risk_service";
import { ActionType, DecisionCode, decisionCodeToJSON, type RequiredAction } from "./tradeguard/v1/types";

/** Reconnect backoff, the same as the Python and Go clients: 100 ms growing to 2 s (grpc-js: 1 s to 120 s). */
export const CHANNEL_OPTIONS: ChannelOptions = {
  "grpc.initial_reconnect_backoff_ms": 100,
  "grpc.max_reconnect_backoff_ms": 2000,
};

export const CAN_TRADE_METHOD = "/tradeguard.v1.RiskService/CanTrade";

/** A fresh client_order_id: "tg-" and 32 hex digits. */
export function newClientOrderId(): string {
  return `tg-${randomBytes(16).toString("hex")}`;
}

export interface Outcome {
  /** Always set: the sidecar's decision, or this client's denial (SIDECAR_UNAVAILABLE / INVALID_RESPONSE). */
  decision: CanTradeResponse;
  /** False when the call failed (then `error` is set and the decision is a SIDECAR_UNAVAILABLE denial). */
  reached: boolean;
  error?: ServiceError;
}

function isServiceError(err: unknown): err is ServiceError {
  return err instanceof Error && typeof (err as Partial<ServiceError>).code === "number";
}

export function errText(err: unknown): string {
  if (isServiceError(err)) {
    return `${status[err.code]}: ${err.details}`;
  }
  return String(err);
}

export function unavailable(err: unknown, clientOrderId = ""): CanTradeResponse {
  return CanTradeResponse.fromPartial({
    allowed: false,
    code: DecisionCode.DECISION_CODE_SIDECAR_UNAVAILABLE,
    reason: `SIDECAR_UNAVAILABLE: ${errText(err)}; denied because the client fails closed`,
    clientOrderId,
  });
}

/** The denial for an answer that breaks the protocol; never allowed, whatever else is configured. */
export function invalid(why: string, answerReason: string, clientOrderId: string): CanTradeResponse {
  let reason = `INVALID_RESPONSE: the answer broke the protocol: ${why}; denied (whatever answered cannot allow)`;
  if (answerReason) {
    reason += `; its reason was ${JSON.stringify(answerReason.slice(0, 200))}`;
  }
  return CanTradeResponse.fromPartial({
    allowed: false,
    code: DecisionCode.DECISION_CODE_INVALID_RESPONSE,
    reason,
    clientOrderId,
  });
}

const NOT_RULES = new Set<number>([
  DecisionCode.DECISION_CODE_UNSPECIFIED,
  DecisionCode.DECISION_CODE_ALLOWED,
  DecisionCode.DECISION_CODE_SIDECAR_UNAVAILABLE,
  DecisionCode.DECISION_CODE_INVALID_RESPONSE,
]);

function isKnown(code: number): boolean {
  return decisionCodeToJSON(code) !== "UNRECOGNIZED";
}

function isRuleCode(code: number): boolean {
  return isKnown(code) && !NOT_RULES.has(code);
}

function codeText(code: number): string {
  if (!isKnown(code)) {
    return `unknown code ${code}`;
  }
  const name = decisionCodeToJSON(code);
  if (code === DecisionCode.DECISION_CODE_UNSPECIFIED) {
    return `${name} (${code}, never sent by a server)`;
  }
  if (code === DecisionCode.DECISION_CODE_SIDECAR_UNAVAILABLE || code === DecisionCode.DECISION_CODE_INVALID_RESPONSE) {
    return `${name} (${code}, set by clients only)`;
  }
  return `${name} (${code})`;
}

function badDate(d: Date | undefined): boolean {
  return d !== undefined && Number.isNaN(d.getTime());
}

/**
 * Why `resp` is an answer no TradeGuard server sends, or undefined when it is a valid one. Valid: allowed
 * with DECISION_CODE_ALLOWED; allowed with a rule's code and would_deny (shadow mode); denied with a rule's
 * code; and every timestamp a valid date.
 */
export function protocolViolation(resp: CanTradeResponse): string | undefined {
  const dates: [string, Date | undefined][] = [
    ["paused_until", resp.pausedUntil],
    ["state.paused_until", resp.state?.pausedUntil],
    ["state.last_equity_at", resp.state?.lastEquityAt],
    ["state.updated_at", resp.state?.updatedAt],
  ];
  for (const [name, d] of dates) {
    if (badDate(d)) {
      return `a field cannot be read (${name}: not a valid timestamp)`;
    }
  }
  const code = resp.code as number;
  if (resp.allowed) {
    if (code === DecisionCode.DECISION_CODE_ALLOWED) {
      return undefined;
    }
    if (isRuleCode(code)) {
      return resp.wouldDeny
        ? undefined
        : `allowed=true with the rule code ${codeText(code)} but would_deny=false ` +
            "(only shadow mode allows with a rule's code, and it sets would_deny)";
    }
    return `allowed=true with ${codeText(code)}`;
  }
  return isRuleCode(code) ? undefined : `allowed=false with ${codeText(code)}`;
}

/**
 * Asks the sidecar; always resolves to a decision (see Outcome). An order without clientOrderId gets one
 * first (`req` is not changed; the id is in the decision's clientOrderId).
 */
export function canTrade(
  client: RiskServiceClient,
  req: CanTradeRequest,
  timeoutMs: number,
  metadata: Metadata = new Metadata(),
): Promise<Outcome> {
  let orderId = "";
  if (req.order !== undefined) {
    orderId = req.order.clientOrderId || newClientOrderId();
    if (!req.order.clientOrderId) {
      req = { ...req, order: { ...req.order, clientOrderId: orderId } };
    }
  }
  const deadline = new Date(Date.now() + timeoutMs);
  return new Promise((resolve) => {
    client.makeUnaryRequest<CanTradeRequest, Buffer>(
      CAN_TRADE_METHOD,
      (r) => Buffer.from(CanTradeRequest.encode(r).finish()),
      (b) => b,
      req,
      metadata,
      { deadline },
      (err, body) => {
        if (err) {
          resolve({ decision: unavailable(err, orderId), reached: false, error: err });
          return;
        }
        if (body === undefined) {
          resolve({ decision: invalid("the call ended OK without a message", "", orderId), reached: true });
          return;
        }
        let resp: CanTradeResponse;
        try {
          resp = CanTradeResponse.decode(body);
        } catch (e) {
          const why = `the body (${body.length} bytes) is not a CanTradeResponse (${String(e)})`;
          resolve({ decision: invalid(why, "", orderId), reached: true });
          return;
        }
        const why = protocolViolation(resp);
        if (why !== undefined) {
          resolve({ decision: invalid(why, resp.reason, orderId), reached: true });
          return;
        }
        resolve({ decision: { ...resp, clientOrderId: resp.clientOrderId || orderId }, reached: true });
      },
    );
  });
}

/**
 * Whether `actions` (of any answer: CanTrade, a report, a WatchRiskState update) ask the bot to cancel every
 * working order at the venue now (ACTION_TYPE_CANCEL_ALL_ORDERS: the trader was HALTED), and the
 * client_order_ids they list: the pending orders the sidecar knows of, each once. Cancel every working order,
 * then report each with reportOrder ORDER_STATUS_CANCELLED (until then they stay counted).
 */
export function cancelAllOrders(actions: readonly RequiredAction[]): { cancel: boolean; clientOrderIds: string[] } {
  const cancels = actions.filter((a) => a.type === ActionType.ACTION_TYPE_CANCEL_ALL_ORDERS);
  return { cancel: cancels.length > 0, clientOrderIds: [...new Set(cancels.flatMap((a) => a.clientOrderIds))] };
}

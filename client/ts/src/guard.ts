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

import { type ChannelOptions, type ClientDuplexStream, Metadata, type ServiceError, status } from "@grpc/grpc-js";

import {
  CanTradeRequest,
  CanTradeResponse,
  type RiskServiceClient,
  SessionRequest,
  type SessionResponse,
} from "./tradeguard/v1/risk_service";
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

/**
 * One RiskService.Session stream (issue 18) carrying canTrade: one answer per request, in order, each exactly what
 * the unary RPC answers. A broken stream fails the calls in flight (canTrade fails closed: SIDECAR_UNAVAILABLE)
 * and the next call opens a new stream (the channel reconnects with CHANNEL_OPTIONS' backoff). `close()`
 * half-closes the stream: a clean close, which never triggers cancel-on-disconnect. `metadata` goes with every
 * stream (a token; the tradeguard-session-* keys of cancel-on-disconnect).
 *
 *   const session = new Session(client);
 *   const { decision } = await session.canTrade(CanTradeRequest.fromPartial({ ... }), 500);
 */
export class Session {
  private stream: ClientDuplexStream<SessionRequest, SessionResponse> | undefined;
  private nextId = 0;
  private readonly pending = new Map<number, (r: SessionResponse | Error) => void>();

  constructor(
    private readonly client: RiskServiceClient,
    private readonly metadata: Metadata = new Metadata(),
  ) {}

  private open(): ClientDuplexStream<SessionRequest, SessionResponse> {
    if (this.stream !== undefined) {
      return this.stream;
    }
    const stream = this.client.session(this.metadata);
    const fail = (err: Error): void => {
      if (this.stream === stream) {
        this.stream = undefined;
      }
      for (const deliver of this.pending.values()) {
        deliver(err);
      }
      this.pending.clear();
    };
    stream.on("data", (resp: SessionResponse) => {
      const id = Number(resp.requestId);
      const deliver = this.pending.get(id);
      this.pending.delete(id);
      deliver?.(resp);
    });
    stream.on("error", (err: Error) => fail(err));
    stream.on("end", () => fail(Object.assign(new Error("session stream ended"), { code: status.UNAVAILABLE })));
    this.stream = stream;
    return stream;
  }

  /** Sends one request (its requestId is set here); its answer, or an error, within timeoutMs. */
  call(req: SessionRequest, timeoutMs: number): Promise<SessionResponse> {
    return new Promise((resolve, reject) => {
      let stream: ClientDuplexStream<SessionRequest, SessionResponse>;
      try {
        stream = this.open();
      } catch (err) {
        reject(err);
        return;
      }
      const id = ++this.nextId;
      const timer = setTimeout(() => {
        this.pending.delete(id);
        reject(Object.assign(new Error("Deadline Exceeded (no answer on the session in time)"),
          { code: status.DEADLINE_EXCEEDED }));
      }, timeoutMs);
      this.pending.set(id, (r) => {
        clearTimeout(timer);
        if (r instanceof Error) {
          reject(r);
        } else {
          resolve(r);
        }
      });
      stream.write({ ...req, requestId: id });
    });
  }

  /** canTrade (above) over the session: always resolves to a decision. */
  async canTrade(req: CanTradeRequest, timeoutMs: number): Promise<Outcome> {
    let orderId = "";
    if (req.order !== undefined) {
      orderId = req.order.clientOrderId || newClientOrderId();
      if (!req.order.clientOrderId) {
        req = { ...req, order: { ...req.order, clientOrderId: orderId } };
      }
    }
    let resp: SessionResponse;
    try {
      resp = await this.call(SessionRequest.fromPartial({ canTrade: req }), timeoutMs);
    } catch (err) {
      return { decision: unavailable(err, orderId), reached: false, error: err as ServiceError };
    }
    if (resp.error !== undefined) {
      const err = Object.assign(new Error(`${resp.error.code} ${resp.error.message}`),
        { code: resp.error.code, details: resp.error.message, metadata: new Metadata() }) as ServiceError;
      return { decision: unavailable(err, orderId), reached: false, error: err };
    }
    const answer = resp.canTrade;
    if (answer === undefined) {
      return { decision: invalid("the session answered something else than a CanTradeResponse", "", orderId),
        reached: true };
    }
    const why = protocolViolation(answer);
    if (why !== undefined) {
      return { decision: invalid(why, answer.reason, orderId), reached: true };
    }
    return { decision: { ...answer, clientOrderId: answer.clientOrderId || orderId }, reached: true };
  }

  /** Half-close: a clean close (no cancel-on-disconnect). */
  close(): void {
    const stream = this.stream;
    this.stream = undefined;
    stream?.end();
  }
}

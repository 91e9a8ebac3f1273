// A minimal trading bot that asks the TradeGuard sidecar before it trades.
//
// It walks one scripted cycle with the generated client, with a deadline on every call:
//
//   ReportEquity 10000
//   -> 3 x (CanTrade (allowed) -> place the order at a simulated venue -> ReportOrder what happened):
//      the first fills (ORDER_STATUS_FILLED), the venue refuses the second (ORDER_STATUS_REJECTED),
//      the third rests on its book (ORDER_STATUS_ACCEPTED: it stays pending)
//   -> ReportTrade (the filled position closed at a loss) -> ReportPositions (flat)
//   -> ReportEquity 9400 (a 6% daily loss) -> CanTrade (denied, DECISION_CODE_DAILY_LOSS_LIMIT)
//   -> WatchRiskState (TRADING_STATE_REDUCING)
//
// An allowed order counts as exposure until it is reported, so every order the sidecar allowed is reported
// under the decision's clientOrderId. When an answer or a watched update carries the kill switch's
// ACTION_TYPE_CANCEL_ALL_ORDERS (the trader was HALTED), the bot cancels the working orders at the venue and
// reports each ORDER_STATUS_CANCELLED (with --watch-updates 2, pause the trader while it watches to see it).
//
// Every output line is machine-readable: space-separated key=value pairs, values quoted when needed.
// The bot fails closed: when the sidecar cannot be reached, the decision is
// "allowed=false code=DECISION_CODE_SIDECAR_UNAVAILABLE" and the process exits with status 3. An answer
// no TradeGuard server sends (an "allowed" with an impossible code, an undecodable body) is denied as
// "allowed=false code=DECISION_CODE_INVALID_RESPONSE" (src/guard.ts does both; the client is made with its
// fast reconnect backoff, CHANNEL_OPTIONS).
//
// With --once it asks CanTrade for one order and prints the decision with elapsed_ms (exit 0 when the
// sidecar decided, 3 when unreachable). With --poll-ms N it asks CanTrade every 20 ms for N ms and prints
// one line per call with the wall-clock time (used to measure reconnecting after a sidecar restart).
//
// With --vectors FILE it instead sends each request of a test-vector file and prints one JSON line
// per vector with the proto-JSON response (used by the cross-language wire-compatibility test).
//
// Exit status: 0 ok, 1 the sidecar answered something unexpected, 2 bad usage, 3 sidecar unavailable.
//
// Build and run: npm ci && npm run build && node dist/examples/trader/main.js --addr 127.0.0.1:50051

import { readFileSync } from "node:fs";
import { parseArgs } from "node:util";

import { credentials, Metadata, type ServiceError, status } from "@grpc/grpc-js";

import { CHANNEL_OPTIONS, canTrade, cancelAllOrders, errText, Session, unavailable } from "../../src/guard";
import {
  CanTradeRequest,
  CanTradeResponse,
  GetRiskStateRequest,
  GetRiskStateResponse,
  ReportEquityRequest,
  ReportEquityResponse,
  ReportOrderRequest,
  ReportOrderResponse,
  ReportPositionsRequest,
  ReportPositionsResponse,
  ReportPricesRequest,
  ReportPricesResponse,
  ReportTradeRequest,
  ReportTradeResponse,
  RiskServiceClient,
  type WatchRiskStateResponse,
} from "../../src/tradeguard/v1/risk_service";
import {
  CheckStatus,
  decisionCodeToJSON,
  type OrderIntent,
  OrderStatus,
  orderStatusToJSON,
  type RequiredAction,
  Side,
  tradingStateToJSON,
} from "../../src/tradeguard/v1/types";

const EXIT_UNEXPECTED = 1;
const EXIT_USAGE = 2;
const EXIT_UNAVAILABLE = 3;

interface Options {
  addr: string;
  traderId: string;
  accountId: string;
  timeoutMs: number;
  watchUpdates: number;
  vectors?: string;
  once: boolean;
  pollMs: number;
  grpcDefaultBackoff: boolean;
  noSession: boolean;
}

class UnexpectedAnswer extends Error {}

/** One unary call of the generated client, as a promise, with its own deadline. */
function unary<Req, Res>(
  method: (
    req: Req,
    metadata: Metadata,
    options: { deadline: Date },
    callback: (err: ServiceError | null, res: Res) => void,
  ) => unknown,
  req: Req,
  timeoutMs: number,
): Promise<Res> {
  return new Promise((resolve, reject) => {
    method(req, new Metadata(), { deadline: new Date(Date.now() + timeoutMs) }, (err, res) =>
      err ? reject(err) : resolve(res),
    );
  });
}

function isServiceError(err: unknown): err is ServiceError {
  return err instanceof Error && typeof (err as Partial<ServiceError>).code === "number";
}

function quote(s: string): string {
  return s !== "" && !/[\s"=\\]/.test(s) ? s : JSON.stringify(s);
}

function printDecision(d: CanTradeResponse): void {
  const failed = d.checks.filter((c) => c.status === CheckStatus.CHECK_STATUS_FAIL).map((c) => c.name);
  console.log(
    `step=can_trade allowed=${d.allowed} code=${decisionCodeToJSON(d.code)} ` +
      `trading_state=${tradingStateToJSON(d.tradingState)} would_deny=${d.wouldDeny} ` +
      `client_order_id=${quote(d.clientOrderId)} failed_checks=${quote(failed.join(","))} reason=${quote(d.reason)}`,
  );
}

/** A 0.01 BTCUSDT buy at `price`. */
function exampleOrder(price = 50000): OrderIntent {
  return {
    symbol: "BTCUSDT",
    exchange: "binance",
    side: Side.SIDE_BUY,
    quantity: 0.01,
    price,
    leverage: 0,
    reduceOnly: false,
    stopPrice: 0,
    volatility: 0,
    clientOrderId: "", // the client makes one (guard.canTrade)
  };
}

/**
 * A simulated exchange with one market price: a buy at or above it fills there, one up to 5% below it rests on
 * the book until cancelled, and one further away is refused (outside the venue's price band).
 */
class Venue {
  private readonly working = new Set<string>();

  constructor(private readonly market: number) {}

  place(clientOrderId: string, order: OrderIntent): { status: OrderStatus; filled: number; averagePrice: number } {
    if (Math.abs(order.price - this.market) > 0.05 * this.market) {
      return { status: OrderStatus.ORDER_STATUS_REJECTED, filled: 0, averagePrice: 0 };
    }
    if (order.price >= this.market) {
      return { status: OrderStatus.ORDER_STATUS_FILLED, filled: order.quantity, averagePrice: this.market };
    }
    this.working.add(clientOrderId);
    return { status: OrderStatus.ORDER_STATUS_ACCEPTED, filled: 0, averagePrice: 0 };
  }

  /** Cancels every working order (a real bot asks its exchange here) and returns their ids. */
  cancelAll(): string[] {
    const ids = [...this.working];
    this.working.clear();
    return ids;
  }
}

class Bot {
  private readonly venue = new Venue(50000);
  // canTrade goes over one Session stream (issue 18): about half the latency of a unary call. close() is a clean
  // close (no cancel-on-disconnect).
  readonly session: Session;

  constructor(
    private readonly client: RiskServiceClient,
    private readonly opts: Options,
  ) {
    this.session = new Session(client);
  }

  private ids(): { traderId: string; accountId: string } {
    return { traderId: this.opts.traderId, accountId: this.opts.accountId };
  }

  /**
   * Asks the sidecar and fails closed (guard.canTrade): a failed call becomes a SIDECAR_UNAVAILABLE denial
   * (reached=false), an impossible answer an INVALID_RESPONSE denial.
   */
  async canTrade(order?: OrderIntent): Promise<{ decision: CanTradeResponse; reached: boolean }> {
    try {
      const req = CanTradeRequest.fromPartial({ ...this.ids(), order });
      if (this.opts.noSession) {
        return await canTrade(this.client, req, this.opts.timeoutMs);
      }
      return await this.session.canTrade(req, this.opts.timeoutMs);
    } catch (err) {
      return { decision: unavailable(err), reached: false };
    }
  }

  /** --once: one CanTrade for the example order, with elapsed_ms. */
  async once(): Promise<number> {
    const start = process.hrtime.bigint();
    const { decision, reached } = await this.canTrade(exampleOrder());
    const elapsedMs = Number(process.hrtime.bigint() - start) / 1e6;
    printDecision(decision);
    console.log(`step=once elapsed_ms=${elapsedMs.toFixed(1)} client_order_id=${quote(decision.clientOrderId)}`);
    return reached ? 0 : EXIT_UNAVAILABLE;
  }

  /** --poll-ms: CanTrade (no order) every 20 ms, one line per call. */
  async poll(): Promise<number> {
    const end = Date.now() + this.opts.pollMs;
    while (Date.now() < end) {
      const { decision, reached } = await this.canTrade();
      console.log(`step=poll unix_ms=${Date.now()} reached=${reached} code=${decisionCodeToJSON(decision.code)}`);
      await new Promise((r) => setTimeout(r, 20));
    }
    return 0;
  }

  async reportEquity(equity: number): Promise<void> {
    const req = ReportEquityRequest.fromPartial({ ...this.ids(), equity, observedAt: new Date() });
    const resp = await unary(this.client.reportEquity.bind(this.client), req, this.opts.timeoutMs);
    const st = resp.state;
    console.log(
      `step=report_equity equity=${st?.currentEquity ?? 0} daily_pnl_pct=${st?.dailyPnlPct ?? 0} ` +
        `trading_state=${tradingStateToJSON(st?.tradingState ?? 0)} breaker_events=${resp.breakerEvents.length}`,
    );
  }

  /** Tells the sidecar what happened to an order it allowed (`filledQuantity` is cumulative). */
  async reportOrder(
    clientOrderId: string,
    status: OrderStatus,
    filledQuantity = 0,
    averagePrice = 0,
  ): Promise<ReportOrderResponse> {
    const req = ReportOrderRequest.fromPartial({ ...this.ids(), clientOrderId, status, filledQuantity, averagePrice });
    const resp = await unary(this.client.reportOrder.bind(this.client), req, this.opts.timeoutMs);
    console.log(
      `step=report_order client_order_id=${quote(clientOrderId)} ` +
        `status=${orderStatusToJSON(resp.order?.status ?? 0)} ` +
        `filled_quantity=${resp.order?.filledQuantity ?? 0} duplicate=${resp.duplicate} ` +
        `pending_orders=${resp.state?.pendingOrderCount ?? 0}`,
    );
    return resp;
  }

  /**
   * The kill switch: when `actions` carry cancel_all_orders, cancel every working order at the venue, then
   * report ORDER_STATUS_CANCELLED for those and for any other order the sidecar still counts as pending.
   */
  async cancelIfAsked(actions: RequiredAction[]): Promise<void> {
    const { cancel, clientOrderIds } = cancelAllOrders(actions);
    if (!cancel) {
      return;
    }
    console.log(`step=cancel_all_orders client_order_ids=${quote(clientOrderIds.join(","))}`);
    for (const id of new Set([...this.venue.cancelAll(), ...clientOrderIds])) {
      await this.reportOrder(id, OrderStatus.ORDER_STATUS_CANCELLED);
    }
  }

  async run(): Promise<number> {
    let step = "report_equity";
    try {
      // 1. Report the starting equity.
      await this.reportEquity(10000);

      // 2. Ask before placing each order; place it; report what happened to it under the decision's id.
      //    At 50000 it fills, at 40000 the venue refuses it, at 49000 it rests on the book.
      for (const price of [50000, 40000, 49000]) {
        step = "can_trade";
        const order = exampleOrder(price);
        const { decision, reached } = await this.canTrade(order); // guard.canTrade makes the clientOrderId
        printDecision(decision);
        if (!reached) {
          return EXIT_UNAVAILABLE;
        }
        if (!decision.allowed) {
          throw new UnexpectedAnswer("an order was denied; use fresh --trader/--account ids");
        }
        step = "report_order";
        const { status, filled, averagePrice } = this.venue.place(decision.clientOrderId, order);
        const report = await this.reportOrder(decision.clientOrderId, status, filled, averagePrice);
        await this.cancelIfAsked(report.actions);
      }

      // 3. The filled position closes at a loss: report the trade, then the positions (flat; the resting
      //    order stays pending until it is reported).
      step = "report_trade";
      const tradeId = `${this.opts.traderId}-trade-1`;
      const trade = await unary(
        this.client.reportTrade.bind(this.client),
        ReportTradeRequest.fromPartial({
          ...this.ids(),
          tradeId,
          symbol: "BTCUSDT",
          exchange: "binance",
          side: Side.SIDE_BUY,
          realizedPnl: -600,
          closedAt: new Date(),
        }),
        this.opts.timeoutMs,
      );
      console.log(
        `step=report_trade trade_id=${tradeId} duplicate=${trade.duplicate} ` +
          `consecutive_losses=${trade.state?.consecutiveLosses ?? 0} ` +
          `trading_state=${tradingStateToJSON(trade.state?.tradingState ?? 0)}`,
      );
      step = "report_positions";
      const positions = await unary(
        this.client.reportPositions.bind(this.client),
        ReportPositionsRequest.fromPartial({ ...this.ids(), positions: [] }),
        this.opts.timeoutMs,
      );
      console.log(
        `step=report_positions positions=${positions.state?.positions.length ?? 0} ` +
          `pending_orders=${positions.state?.pendingOrderCount ?? 0}`,
      );

      // 4. Equity falls 6% in the day: past the default 5% daily limit.
      step = "report_equity";
      await this.reportEquity(9400);

      // 5. Ask again: denied.
      const { decision, reached } = await this.canTrade(exampleOrder());
      printDecision(decision);
      if (!reached) {
        return EXIT_UNAVAILABLE;
      }
      if (decision.allowed) {
        throw new UnexpectedAnswer("order after a 6% daily loss was allowed");
      }

      // 6. Watch the risk state: the stream starts with the current state (REDUCING). A kill switch (HALTED)
      //    sends an update with the cancel_all_orders action: cancel the working orders and report them.
      step = "watch";
      await this.watch(this.opts.watchUpdates, async (update) => {
        const st = update.state;
        const pausedUntil = st?.pausedUntil ? st.pausedUntil.toISOString().replace(/\.\d+Z$/, "Z") : "";
        console.log(
          `step=watch reason=${quote(update.reason)} trading_state=${tradingStateToJSON(st?.tradingState ?? 0)} ` +
            `pause_code=${decisionCodeToJSON(st?.pauseCode ?? 0)} paused_until=${quote(pausedUntil)} ` +
            `actions=${update.actions.length} pending_orders=${st?.pendingOrders.length ?? 0}`,
        );
        await this.cancelIfAsked(update.actions);
      });
      console.log("step=done ok=true");
      return 0;
    } catch (err) {
      if (err instanceof UnexpectedAnswer) {
        console.log(`step=error msg=${quote(err.message)}`);
        return EXIT_UNEXPECTED;
      }
      return this.failClosed(step, err);
    }
  }

  /** Hands the first `count` updates of WatchRiskState to `onUpdate` as they come, then cancels the stream. */
  private async watch(count: number, onUpdate: (update: WatchRiskStateResponse) => Promise<void>): Promise<void> {
    if (count <= 0) {
      return;
    }
    const deadline = new Date(Date.now() + this.opts.timeoutMs);
    const stream = this.client.watchRiskState({ ...this.ids() }, new Metadata(), { deadline });
    let seen = 0;
    try {
      for await (const update of stream as AsyncIterable<WatchRiskStateResponse>) {
        await onUpdate(update);
        seen += 1;
        if (seen >= count) {
          break;
        }
      }
    } finally {
      stream.on("error", () => {}); // the CANCELLED status of our own cancel
      stream.cancel();
    }
    if (seen < count) {
      throw new Error(`stream ended after ${seen} of ${count} updates`);
    }
  }

  /** Logs the failed call; the bot then must not trade: it asks once more and stops. */
  private async failClosed(step: string, err: unknown): Promise<number> {
    console.log(`step=${step} error=${quote(errText(err))}`);
    const { decision, reached } = await this.canTrade();
    printDecision(decision);
    return reached ? EXIT_UNEXPECTED : EXIT_UNAVAILABLE;
  }
}

// ---- test vectors ---------------------------------------------------------------------------

interface Vector {
  name: string;
  method: string;
  request: unknown;
}

interface Codec<Req, Res> {
  req: { fromJSON(object: unknown): Req };
  res: { toJSON(message: Res): unknown };
  call: (client: RiskServiceClient) => Parameters<typeof unary<Req, Res>>[0];
}

function codec<Req, Res>(c: Codec<Req, Res>): Codec<Req, Res> {
  return c;
}

const METHODS = {
  CanTrade: codec({ req: CanTradeRequest, res: CanTradeResponse, call: (c) => c.canTrade.bind(c) }),
  ReportEquity: codec({ req: ReportEquityRequest, res: ReportEquityResponse, call: (c) => c.reportEquity.bind(c) }),
  ReportTrade: codec({ req: ReportTradeRequest, res: ReportTradeResponse, call: (c) => c.reportTrade.bind(c) }),
  ReportPositions: codec({
    req: ReportPositionsRequest,
    res: ReportPositionsResponse,
    call: (c) => c.reportPositions.bind(c),
  }),
  GetRiskState: codec({ req: GetRiskStateRequest, res: GetRiskStateResponse, call: (c) => c.getRiskState.bind(c) }),
  ReportOrder: codec({ req: ReportOrderRequest, res: ReportOrderResponse, call: (c) => c.reportOrder.bind(c) }),
  ReportPrices: codec({ req: ReportPricesRequest, res: ReportPricesResponse, call: (c) => c.reportPrices.bind(c) }),
} as const;

async function sendVector<Req, Res>(client: RiskServiceClient, c: Codec<Req, Res>, v: Vector, timeoutMs: number) {
  const res = await unary(c.call(client), c.req.fromJSON(v.request), timeoutMs);
  return c.res.toJSON(res);
}

async function runVectors(client: RiskServiceClient, opts: Options, file: string): Promise<number> {
  const vectors = (JSON.parse(readFileSync(file, "utf8")) as { vectors: Vector[] }).vectors;
  for (const v of vectors) {
    const c = (METHODS as Record<string, Codec<unknown, unknown>>)[v.method];
    if (c === undefined) {
      console.error(`vector ${v.name}: unknown method ${v.method}`);
      return EXIT_USAGE;
    }
    try {
      const response = await sendVector(client, c, v, opts.timeoutMs);
      console.log(JSON.stringify({ name: v.name, method: v.method, response }));
    } catch (err) {
      if (!isServiceError(err)) {
        throw err;
      }
      console.log(
        JSON.stringify({ name: v.name, method: v.method, error: { code: status[err.code], message: err.details } }),
      );
    }
  }
  return 0;
}

// ---- main -----------------------------------------------------------------------------------

function parseOptions(argv: string[]): Options {
  const { values } = parseArgs({
    args: argv,
    options: {
      addr: { type: "string", default: process.env.TRADEGUARD_ADDR || "127.0.0.1:50051" },
      trader: { type: "string", default: "example-ts-trader" },
      account: { type: "string", default: "example-ts-account" },
      "timeout-ms": { type: "string", default: "2000" },
      "watch-updates": { type: "string", default: "1" },
      vectors: { type: "string" },
      once: { type: "boolean", default: false },
      "poll-ms": { type: "string", default: "0" },
      "grpc-default-backoff": { type: "boolean", default: false },
      "no-session": { type: "boolean", default: false },
    },
    strict: true,
  });
  const timeoutMs = Number(values["timeout-ms"]);
  const watchUpdates = Number(values["watch-updates"]);
  const pollMs = Number(values["poll-ms"]);
  if (!Number.isFinite(timeoutMs) || timeoutMs <= 0 || !Number.isInteger(watchUpdates) || watchUpdates < 0 ||
      !Number.isInteger(pollMs) || pollMs < 0) {
    throw new TypeError("--timeout-ms must be > 0, --watch-updates and --poll-ms integers >= 0");
  }
  return {
    addr: values.addr!,
    traderId: values.trader!,
    accountId: values.account!,
    timeoutMs,
    watchUpdates,
    vectors: values.vectors,
    once: values.once ?? false,
    pollMs,
    grpcDefaultBackoff: values["grpc-default-backoff"] ?? false,
    noSession: values["no-session"] ?? false,
  };
}

async function main(): Promise<number> {
  let opts: Options;
  try {
    opts = parseOptions(process.argv.slice(2));
  } catch (err) {
    console.error(String(err));
    console.error(
      "usage: main.js [--addr HOST:PORT] [--trader ID] [--account ID] [--timeout-ms N] [--watch-updates N] " +
        "[--vectors FILE] [--once] [--poll-ms N]",
    );
    return EXIT_USAGE;
  }
  // --grpc-default-backoff: grpc-js's own reconnect backoff (1 s growing to 120 s), to compare.
  const client = new RiskServiceClient(opts.addr, credentials.createInsecure(), opts.grpcDefaultBackoff ? {} : CHANNEL_OPTIONS);
  try {
    if (opts.vectors !== undefined) {
      return await runVectors(client, opts, opts.vectors);
    }
    const bot = new Bot(client, opts);
    try {
      if (opts.once) {
        return await bot.once();
      }
      if (opts.pollMs > 0) {
        return await bot.poll();
      }
      return await bot.run();
    } finally {
      bot.session.close();
    }
  } finally {
    client.close();
  }
}

main().then(
  (code) => {
    // Exit now: after a server's GOAWAY, grpc-js can keep the session open past client.close() while the
    // peer keeps its socket, and the process would not end by itself. (stdout to a pipe or file is
    // written synchronously on Linux, so nothing printed is lost.)
    process.exit(code);
  },
  (err: unknown) => {
    console.error(err);
    process.exitCode = EXIT_UNEXPECTED;
  },
);

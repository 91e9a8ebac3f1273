// A minimal trading bot that asks the TradeGuard sidecar before it trades.
//
// It walks one scripted cycle with the generated client, with a deadline on every call:
//
//   ReportEquity 10000 -> CanTrade (allowed) -> ReportTrade -> ReportEquity 9400 (a 6% daily loss)
//   -> CanTrade (denied, DECISION_CODE_DAILY_LOSS_LIMIT) -> WatchRiskState (TRADING_STATE_REDUCING)
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

import { CHANNEL_OPTIONS, canTrade, errText, unavailable } from "../../src/guard";
import {
  CanTradeRequest,
  CanTradeResponse,
  GetRiskStateRequest,
  GetRiskStateResponse,
  ReportEquityRequest,
  ReportEquityResponse,
  ReportPositionsRequest,
  ReportPositionsResponse,
  ReportTradeRequest,
  ReportTradeResponse,
  RiskServiceClient,
  type WatchRiskStateResponse,
} from "../../src/tradeguard/v1/risk_service";
import {
  CheckStatus,
  decisionCodeToJSON,
  type OrderIntent,
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
      `failed_checks=${quote(failed.join(","))} reason=${quote(d.reason)}`,
  );
}

function exampleOrder(): OrderIntent {
  return {
    symbol: "BTCUSDT",
    exchange: "binance",
    side: Side.SIDE_BUY,
    quantity: 0.01,
    price: 50000,
    leverage: 0,
    reduceOnly: false,
    stopPrice: 0,
    volatility: 0,
    clientOrderId: "", // the client makes one (guard.canTrade)
  };
}

class Bot {
  constructor(
    private readonly client: RiskServiceClient,
    private readonly opts: Options,
  ) {}

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
      return await canTrade(this.client, req, this.opts.timeoutMs);
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

  async run(): Promise<number> {
    const order = exampleOrder();
    let step = "report_equity";
    try {
      // 1. Report the starting equity.
      await this.reportEquity(10000);

      // 2. Ask before placing the order: allowed.
      let { decision, reached } = await this.canTrade(order);
      printDecision(decision);
      if (!reached) {
        return EXIT_UNAVAILABLE;
      }
      if (!decision.allowed) {
        throw new UnexpectedAnswer("first order was denied; use fresh --trader/--account ids");
      }

      // 3. The position closes at a loss.
      step = "report_trade";
      const tradeId = `${this.opts.traderId}-trade-1`;
      const trade = await unary(
        this.client.reportTrade.bind(this.client),
        ReportTradeRequest.fromPartial({
          ...this.ids(),
          tradeId,
          symbol: order.symbol,
          exchange: order.exchange,
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

      // 4. Equity falls 6% in the day: past the default 5% daily limit.
      step = "report_equity";
      await this.reportEquity(9400);

      // 5. Ask again: denied.
      ({ decision, reached } = await this.canTrade(order));
      printDecision(decision);
      if (!reached) {
        return EXIT_UNAVAILABLE;
      }
      if (decision.allowed) {
        throw new UnexpectedAnswer("order after a 6% daily loss was allowed");
      }

      // 6. Watch the risk state: the stream starts with the current state (REDUCING).
      step = "watch";
      for (const update of await this.watch(this.opts.watchUpdates)) {
        const st = update.state;
        const pausedUntil = st?.pausedUntil ? st.pausedUntil.toISOString().replace(/\.\d+Z$/, "Z") : "";
        console.log(
          `step=watch reason=${quote(update.reason)} trading_state=${tradingStateToJSON(st?.tradingState ?? 0)} ` +
            `pause_code=${decisionCodeToJSON(st?.pauseCode ?? 0)} paused_until=${quote(pausedUntil)} ` +
            `actions=${update.actions.length}`,
        );
      }
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

  /** Reads the first `count` updates of WatchRiskState, then cancels the stream. */
  private watch(count: number): Promise<WatchRiskStateResponse[]> {
    return new Promise((resolve, reject) => {
      const updates: WatchRiskStateResponse[] = [];
      const deadline = new Date(Date.now() + this.opts.timeoutMs);
      const stream = this.client.watchRiskState(
        { ...this.ids() },
        new Metadata(),
        { deadline },
      );
      let done = count <= 0;
      if (done) {
        stream.cancel();
        resolve(updates);
      }
      stream.on("data", (update: WatchRiskStateResponse) => {
        if (done) {
          return;
        }
        updates.push(update);
        if (updates.length >= count) {
          done = true;
          stream.cancel();
          resolve(updates);
        }
      });
      stream.on("error", (err: ServiceError) => {
        if (!done) {
          done = true;
          reject(err);
        }
      });
      stream.on("end", () => {
        if (!done) {
          done = true;
          reject(new Error(`stream ended after ${updates.length} of ${count} updates`));
        }
      });
    });
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
    if (opts.once) {
      return await bot.once();
    }
    if (opts.pollMs > 0) {
      return await bot.poll();
    }
    return await bot.run();
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

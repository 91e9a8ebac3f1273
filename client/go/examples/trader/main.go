// Command trader is a minimal trading bot that asks the TradeGuard sidecar before it trades.
//
// It walks one scripted cycle with the generated client, with a deadline on every call:
//
//	ReportEquity 10000
//	-> 3 x (CanTrade (allowed) -> place the order at a simulated venue -> ReportOrder what happened):
//	   the first fills (ORDER_STATUS_FILLED), the venue refuses the second (ORDER_STATUS_REJECTED),
//	   the third rests on its book (ORDER_STATUS_ACCEPTED: it stays pending)
//	-> ReportTrade (the filled position closed at a loss) -> ReportPositions (flat)
//	-> ReportEquity 9400 (a 6% daily loss) -> CanTrade (denied, DECISION_CODE_DAILY_LOSS_LIMIT)
//	-> WatchRiskState (TRADING_STATE_REDUCING)
//
// An allowed order counts as exposure until it is reported, so every order the sidecar allowed is reported
// under the decision's client_order_id. When an answer or a watched update carries the kill switch's
// ACTION_TYPE_CANCEL_ALL_ORDERS (the trader was HALTED), the bot cancels the working orders at the venue and
// reports each ORDER_STATUS_CANCELLED (with -watch-updates 2, pause the trader while it watches to see it).
//
// Every output line is machine-readable: space-separated key=value pairs, values quoted when needed.
// The bot fails closed: when the sidecar cannot be reached, the decision is
// "allowed=false code=DECISION_CODE_SIDECAR_UNAVAILABLE" and the process exits with status 3. An answer
// no TradeGuard server sends (an "allowed" with an impossible code, an undecodable body) is denied as
// "allowed=false code=DECISION_CODE_INVALID_RESPONSE" (package guard does both, and dials with its fast
// reconnect backoff).
//
// With -once it asks CanTrade for one order and prints the decision with elapsed_ms (exit 0 when the
// sidecar decided, 3 when unreachable). With -poll-ms N it asks CanTrade every 20 ms for N ms and prints
// one line per call with the wall-clock time (used to measure reconnecting after a sidecar restart).
//
// With -vectors FILE it instead sends each request of a test-vector file and prints one JSON line
// per vector with the proto-JSON response (used by the cross-language wire-compatibility test).
//
// Exit status: 0 ok, 1 the sidecar answered something unexpected, 2 bad usage, 3 sidecar unavailable.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"math"
	"os"
	"strconv"
	"strings"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/tradeguard/tradeguard/client/go/guard"
	tradeguardv1 "github.com/tradeguard/tradeguard/client/go/tradeguard/v1"
)

const (
	exitUnexpected  = 1
	exitUsage       = 2
	exitUnavailable = 3
)

type options struct {
	addr         string
	traderID     string
	accountID    string
	timeout      time.Duration
	watchUpdates int
	vectors      string
	once         bool
	noSession    bool
	pollMs       int
	grpcBackoff  bool
}

func main() {
	os.Exit(run(os.Args[1:], os.Stdout))
}

func run(args []string, out io.Writer) int {
	defaultAddr := os.Getenv("TRADEGUARD_ADDR")
	if defaultAddr == "" {
		defaultAddr = "127.0.0.1:50051"
	}
	opts := options{}
	fs := flag.NewFlagSet("trader", flag.ContinueOnError)
	fs.StringVar(&opts.addr, "addr", defaultAddr, "sidecar address host:port (env TRADEGUARD_ADDR)")
	fs.StringVar(&opts.traderID, "trader", "example-go-trader", "trader id")
	fs.StringVar(&opts.accountID, "account", "example-go-account", "account id")
	timeoutMs := fs.Int("timeout-ms", 2000, "deadline of every call, milliseconds")
	fs.IntVar(&opts.watchUpdates, "watch-updates", 1, "WatchRiskState updates to print before closing the stream")
	fs.StringVar(&opts.vectors, "vectors", "", "send the requests of this test-vector file and print proto-JSON responses")
	fs.BoolVar(&opts.noSession, "no-session", false, "ask CanTrade with unary calls instead of the Session stream")
	fs.BoolVar(&opts.once, "once", false, "ask CanTrade for one order, print the decision with elapsed_ms, and exit")
	fs.IntVar(&opts.pollMs, "poll-ms", 0, "ask CanTrade every 20 ms for this many ms, one line per call")
	fs.BoolVar(&opts.grpcBackoff, "grpc-default-backoff", false, "dial with grpc-go's default reconnect backoff instead of guard's (to compare)")
	if err := fs.Parse(args); err != nil {
		return exitUsage
	}
	if *timeoutMs <= 0 || opts.watchUpdates < 0 || opts.pollMs < 0 || fs.NArg() > 0 {
		fmt.Fprintln(os.Stderr, "-timeout-ms must be > 0, -watch-updates and -poll-ms >= 0, and no positional arguments")
		return exitUsage
	}
	opts.timeout = time.Duration(*timeoutMs) * time.Millisecond

	// grpc.Dial does not block: the connection is made by the first call, and a call to an
	// unreachable sidecar fails fast with UNAVAILABLE (no WaitForReady) or at its deadline.
	// guard.DialOptions: reconnect backoff 100 ms growing to 2 s (grpc-go's default: 1 s to 120 s).
	dialOpts := guard.DialOptions()
	if opts.grpcBackoff {
		dialOpts = []grpc.DialOption{grpc.WithInsecure()}
	}
	conn, err := grpc.Dial(opts.addr, dialOpts...)
	if err != nil {
		printDecision(out, guard.Unavailable(err))
		return exitUnavailable
	}
	defer conn.Close()
	client := tradeguardv1.NewRiskServiceClient(conn)
	// CanTrade goes over one Session stream (issue 18): about half the latency of a unary call. Close is a clean
	// close (no cancel-on-disconnect); -no-session asks with unary calls.
	if !opts.noSession {
		session = guard.NewSession(conn, nil)
		defer session.Close()
	}

	switch {
	case opts.vectors != "":
		return runVectors(client, opts, out)
	case opts.once:
		return runOnce(conn, opts, out)
	case opts.pollMs > 0:
		return runPoll(conn, opts, out)
	}
	return runBot(conn, client, opts, out)
}

// exampleOrder is a 0.01 BTCUSDT buy at price; its client_order_id is left empty, so guard.CanTrade makes one.
func exampleOrder(price float64) *tradeguardv1.OrderIntent {
	return &tradeguardv1.OrderIntent{
		Symbol:   "BTCUSDT",
		Exchange: "binance",
		Side:     tradeguardv1.Side_SIDE_BUY,
		Quantity: 0.01,
		Price:    price,
	}
}

// venue is a simulated exchange with one market price: a buy at or above it fills there, one up to 5% below
// it rests on the book until cancelled, and one further away is refused (outside the venue's price band).
type venue struct {
	market  float64
	working map[string]bool
}

func (v *venue) place(id string, o *tradeguardv1.OrderIntent) (st tradeguardv1.OrderStatus, filled, avgPrice float64) {
	switch {
	case math.Abs(o.GetPrice()-v.market) > 0.05*v.market:
		return tradeguardv1.OrderStatus_ORDER_STATUS_REJECTED, 0, 0
	case o.GetPrice() >= v.market:
		return tradeguardv1.OrderStatus_ORDER_STATUS_FILLED, o.GetQuantity(), v.market
	}
	v.working[id] = true
	return tradeguardv1.OrderStatus_ORDER_STATUS_ACCEPTED, 0, 0
}

// cancelAll cancels every working order (a real bot asks its exchange here) and returns their ids.
func (v *venue) cancelAll() []string {
	ids := make([]string, 0, len(v.working))
	for id := range v.working {
		ids = append(ids, id)
	}
	v.working = map[string]bool{}
	return ids
}

// canTrade asks the sidecar and fails closed (guard.CanTrade): a failed call becomes a
// SIDECAR_UNAVAILABLE denial (reached=false), an impossible answer an INVALID_RESPONSE denial.
func canTrade(conn *grpc.ClientConn, timeout time.Duration, req *tradeguardv1.CanTradeRequest) (*tradeguardv1.CanTradeResponse, bool) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	if session != nil {
		resp, err := session.CanTrade(ctx, req)
		return resp, err == nil
	}
	resp, err := guard.CanTrade(ctx, conn, req)
	return resp, err == nil
}

// session carries CanTrade when set (see run).
var session *guard.Session

func runOnce(conn *grpc.ClientConn, opts options, out io.Writer) int {
	start := time.Now()
	decision, reached := canTrade(conn, opts.timeout, &tradeguardv1.CanTradeRequest{
		TraderId: opts.traderID, AccountId: opts.accountID, Order: exampleOrder(50000),
	})
	elapsed := time.Since(start)
	printDecision(out, decision)
	fmt.Fprintf(out, "step=once elapsed_ms=%s client_order_id=%s\n",
		strconv.FormatFloat(float64(elapsed.Microseconds())/1000, 'f', 1, 64), quote(decision.GetClientOrderId()))
	if !reached {
		return exitUnavailable
	}
	return 0
}

func runPoll(conn *grpc.ClientConn, opts options, out io.Writer) int {
	end := time.Now().Add(time.Duration(opts.pollMs) * time.Millisecond)
	for time.Now().Before(end) {
		decision, reached := canTrade(conn, opts.timeout, &tradeguardv1.CanTradeRequest{TraderId: opts.traderID, AccountId: opts.accountID})
		fmt.Fprintf(out, "step=poll unix_ms=%d reached=%t code=%s\n", time.Now().UnixNano()/1e6, reached, decision.GetCode())
		time.Sleep(20 * time.Millisecond)
	}
	return 0
}

func runBot(conn *grpc.ClientConn, client tradeguardv1.RiskServiceClient, opts options, out io.Writer) int {
	call := func() (context.Context, context.CancelFunc) {
		return context.WithTimeout(context.Background(), opts.timeout)
	}
	trader, account := opts.traderID, opts.accountID
	market := &venue{market: 50000, working: map[string]bool{}}

	// 1. Report the starting equity.
	if code := reportEquity(conn, client, call, out, opts, 10000); code != 0 {
		return code
	}

	// 2. Ask before placing each order; place it; report what happened to it under the decision's id.
	//    At 50000 it fills, at 40000 the venue refuses it, at 49000 it rests on the book.
	for _, price := range []float64{50000, 40000, 49000} {
		order := exampleOrder(price)
		decision, ok := canTrade(conn, opts.timeout, &tradeguardv1.CanTradeRequest{TraderId: trader, AccountId: account, Order: order})
		printDecision(out, decision)
		if !ok {
			return exitUnavailable
		}
		if !decision.GetAllowed() {
			fmt.Fprintln(out, "step=error msg="+quote("an order was denied; use fresh -trader/-account ids"))
			return exitUnexpected
		}
		st, filled, avgPrice := market.place(decision.GetClientOrderId(), order)
		report, code := reportOrder(conn, client, opts, out, decision.GetClientOrderId(), st, filled, avgPrice)
		if code != 0 {
			return code
		}
		if code := cancelIfAsked(conn, client, opts, out, market, report.GetActions()); code != 0 {
			return code
		}
	}

	// 3. The filled position closes at a loss: report the trade, then the positions (flat; the resting
	//    order stays pending until it is reported).
	ctx, cancel := call()
	trade, err := client.ReportTrade(ctx, &tradeguardv1.ReportTradeRequest{
		TraderId:    trader,
		AccountId:   account,
		TradeId:     trader + "-trade-1",
		Symbol:      "BTCUSDT",
		Exchange:    "binance",
		Side:        tradeguardv1.Side_SIDE_BUY,
		RealizedPnl: -600,
		ClosedAt:    timestamppb.Now(),
	})
	cancel()
	if err != nil {
		return failClosed(conn, opts, out, "report_trade", err)
	}
	fmt.Fprintf(out, "step=report_trade trade_id=%s duplicate=%t consecutive_losses=%d trading_state=%s\n",
		trader+"-trade-1", trade.GetDuplicate(), trade.GetState().GetConsecutiveLosses(), trade.GetState().GetTradingState())
	ctx, cancel = call()
	positions, err := client.ReportPositions(ctx, &tradeguardv1.ReportPositionsRequest{TraderId: trader, AccountId: account})
	cancel()
	if err != nil {
		return failClosed(conn, opts, out, "report_positions", err)
	}
	fmt.Fprintf(out, "step=report_positions positions=%d pending_orders=%d\n",
		len(positions.GetState().GetPositions()), positions.GetState().GetPendingOrderCount())

	// 4. Equity falls 6% in the day: past the default 5% daily limit.
	if code := reportEquity(conn, client, call, out, opts, 9400); code != 0 {
		return code
	}

	// 5. Ask again: denied.
	decision, ok := canTrade(conn, opts.timeout, &tradeguardv1.CanTradeRequest{TraderId: trader, AccountId: account, Order: exampleOrder(50000)})
	printDecision(out, decision)
	if !ok {
		return exitUnavailable
	}
	if decision.GetAllowed() {
		fmt.Fprintln(out, "step=error msg="+quote("order after a 6% daily loss was allowed"))
		return exitUnexpected
	}

	// 6. Watch the risk state: the stream starts with the current state (REDUCING). A kill switch (HALTED)
	//    sends an update with the cancel_all_orders action: cancel the working orders and report them.
	ctx, cancel = call()
	defer cancel()
	stream, err := client.WatchRiskState(ctx, &tradeguardv1.WatchRiskStateRequest{TraderId: trader, AccountId: account})
	if err != nil {
		return failClosed(conn, opts, out, "watch", err)
	}
	for i := 0; i < opts.watchUpdates; i++ {
		update, err := stream.Recv()
		if err != nil {
			return failClosed(conn, opts, out, "watch", err)
		}
		st := update.GetState()
		fmt.Fprintf(out, "step=watch reason=%s trading_state=%s pause_code=%s paused_until=%s actions=%d pending_orders=%d\n",
			quote(update.GetReason()), st.GetTradingState(), st.GetPauseCode(), timestampText(st.GetPausedUntil()),
			len(update.GetActions()), len(st.GetPendingOrders()))
		if code := cancelIfAsked(conn, client, opts, out, market, update.GetActions()); code != 0 {
			return code
		}
	}
	cancel() // closes the stream
	fmt.Fprintln(out, "step=done ok=true")
	return 0
}

// reportOrder tells the sidecar what happened to an order it allowed (filled is cumulative).
func reportOrder(conn *grpc.ClientConn, client tradeguardv1.RiskServiceClient, opts options, out io.Writer,
	id string, st tradeguardv1.OrderStatus, filled, avgPrice float64) (*tradeguardv1.ReportOrderResponse, int) {
	ctx, cancel := context.WithTimeout(context.Background(), opts.timeout)
	defer cancel()
	resp, err := client.ReportOrder(ctx, &tradeguardv1.ReportOrderRequest{
		TraderId:       opts.traderID,
		AccountId:      opts.accountID,
		ClientOrderId:  id,
		Status:         st,
		FilledQuantity: filled,
		AveragePrice:   avgPrice,
	})
	if err != nil {
		return nil, failClosed(conn, opts, out, "report_order", err)
	}
	fmt.Fprintf(out, "step=report_order client_order_id=%s status=%s filled_quantity=%s duplicate=%t pending_orders=%d\n",
		quote(id), resp.GetOrder().GetStatus(), num(resp.GetOrder().GetFilledQuantity()), resp.GetDuplicate(),
		resp.GetState().GetPendingOrderCount())
	return resp, 0
}

// cancelIfAsked obeys the kill switch: when actions carry cancel_all_orders, it cancels every working order
// at the venue, then reports ORDER_STATUS_CANCELLED for those and for any other order the sidecar still
// counts as pending (it counts them until they are reported).
func cancelIfAsked(conn *grpc.ClientConn, client tradeguardv1.RiskServiceClient, opts options, out io.Writer, market *venue,
	actions []*tradeguardv1.RequiredAction) int {
	pending, cancelAll := guard.CancelAllOrders(actions)
	if !cancelAll {
		return 0
	}
	fmt.Fprintf(out, "step=cancel_all_orders client_order_ids=%s\n", quote(strings.Join(pending, ",")))
	reported := map[string]bool{}
	for _, id := range append(market.cancelAll(), pending...) {
		if reported[id] {
			continue
		}
		reported[id] = true
		if _, code := reportOrder(conn, client, opts, out, id, tradeguardv1.OrderStatus_ORDER_STATUS_CANCELLED, 0, 0); code != 0 {
			return code
		}
	}
	return 0
}

func reportEquity(conn *grpc.ClientConn, client tradeguardv1.RiskServiceClient, call func() (context.Context, context.CancelFunc), out io.Writer, opts options, equity float64) int {
	ctx, cancel := call()
	defer cancel()
	resp, err := client.ReportEquity(ctx, &tradeguardv1.ReportEquityRequest{
		TraderId:   opts.traderID,
		AccountId:  opts.accountID,
		Equity:     equity,
		ObservedAt: timestamppb.Now(),
	})
	if err != nil {
		return failClosed(conn, opts, out, "report_equity", err)
	}
	st := resp.GetState()
	fmt.Fprintf(out, "step=report_equity equity=%s daily_pnl_pct=%s trading_state=%s breaker_events=%d\n",
		num(st.GetCurrentEquity()), num(st.GetDailyPnlPct()), st.GetTradingState(), len(resp.GetBreakerEvents()))
	return 0
}

// failClosed logs a failed call; the bot then must not trade: it asks once more (the answer is a
// SIDECAR_UNAVAILABLE denial when the sidecar is gone), prints the decision and stops.
func failClosed(conn *grpc.ClientConn, opts options, out io.Writer, step string, err error) int {
	fmt.Fprintf(out, "step=%s error=%s\n", step, quote(guard.ErrText(err)))
	decision, ok := canTrade(conn, opts.timeout, &tradeguardv1.CanTradeRequest{TraderId: opts.traderID, AccountId: opts.accountID})
	if ok {
		// The sidecar answered after all; the bot still stops this cycle.
		printDecision(out, decision)
		return exitUnexpected
	}
	printDecision(out, decision)
	return exitUnavailable
}

func printDecision(out io.Writer, d *tradeguardv1.CanTradeResponse) {
	failed := make([]string, 0)
	for _, c := range d.GetChecks() {
		if c.GetStatus() == tradeguardv1.CheckStatus_CHECK_STATUS_FAIL {
			failed = append(failed, c.GetName())
		}
	}
	fmt.Fprintf(out, "step=can_trade allowed=%t code=%s trading_state=%s would_deny=%t client_order_id=%s failed_checks=%s reason=%s\n",
		d.GetAllowed(), d.GetCode(), d.GetTradingState(), d.GetWouldDeny(), quote(d.GetClientOrderId()),
		quote(strings.Join(failed, ",")), quote(d.GetReason()))
}

func timestampText(ts *timestamppb.Timestamp) string {
	if ts == nil {
		return `""`
	}
	return ts.AsTime().UTC().Format(time.RFC3339)
}

func num(v float64) string { return strconv.FormatFloat(v, 'f', -1, 64) }

func quote(s string) string {
	if s != "" && !strings.ContainsAny(s, " \t\"=\\\n") {
		return s
	}
	return strconv.Quote(s)
}

// ---- test vectors ---------------------------------------------------------------------------

type vectorFile struct {
	Vectors []vector `json:"vectors"`
}

type vector struct {
	Name    string          `json:"name"`
	Method  string          `json:"method"`
	Request json.RawMessage `json:"request"`
}

type vectorResult struct {
	Name     string          `json:"name"`
	Method   string          `json:"method"`
	Response json.RawMessage `json:"response,omitempty"`
	Error    *vectorError    `json:"error,omitempty"`
}

type vectorError struct {
	Code    string `json:"code"`
	Message string `json:"message"`
}

func runVectors(client tradeguardv1.RiskServiceClient, opts options, out io.Writer) int {
	data, err := os.ReadFile(opts.vectors)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return exitUsage
	}
	var file vectorFile
	if err := json.Unmarshal(data, &file); err != nil {
		fmt.Fprintln(os.Stderr, "bad vector file:", err)
		return exitUsage
	}
	enc := json.NewEncoder(out)
	for _, v := range file.Vectors {
		resp, err := sendVector(client, opts.timeout, v)
		result := vectorResult{Name: v.Name, Method: v.Method}
		if err != nil {
			st, ok := status.FromError(err)
			if !ok {
				fmt.Fprintf(os.Stderr, "vector %s: %v\n", v.Name, err)
				return exitUsage
			}
			result.Error = &vectorError{Code: guard.CodeName(st.Code()), Message: st.Message()}
		} else {
			raw, err := protojson.Marshal(resp)
			if err != nil {
				fmt.Fprintln(os.Stderr, err)
				return exitUnexpected
			}
			result.Response = raw
		}
		if err := enc.Encode(result); err != nil {
			return exitUnexpected
		}
	}
	return 0
}

func sendVector(client tradeguardv1.RiskServiceClient, timeout time.Duration, v vector) (proto.Message, error) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	parse := func(m proto.Message) error {
		if err := protojson.Unmarshal(v.Request, m); err != nil {
			return fmt.Errorf("vector %s: bad request: %w", v.Name, err)
		}
		return nil
	}
	switch v.Method {
	case "CanTrade":
		req := &tradeguardv1.CanTradeRequest{}
		if err := parse(req); err != nil {
			return nil, err
		}
		return client.CanTrade(ctx, req)
	case "ReportEquity":
		req := &tradeguardv1.ReportEquityRequest{}
		if err := parse(req); err != nil {
			return nil, err
		}
		return client.ReportEquity(ctx, req)
	case "ReportTrade":
		req := &tradeguardv1.ReportTradeRequest{}
		if err := parse(req); err != nil {
			return nil, err
		}
		return client.ReportTrade(ctx, req)
	case "ReportPositions":
		req := &tradeguardv1.ReportPositionsRequest{}
		if err := parse(req); err != nil {
			return nil, err
		}
		return client.ReportPositions(ctx, req)
	case "GetRiskState":
		req := &tradeguardv1.GetRiskStateRequest{}
		if err := parse(req); err != nil {
			return nil, err
		}
		return client.GetRiskState(ctx, req)
	case "ReportOrder":
		req := &tradeguardv1.ReportOrderRequest{}
		if err := parse(req); err != nil {
			return nil, err
		}
		return client.ReportOrder(ctx, req)
	case "ReportPrices":
		req := &tradeguardv1.ReportPricesRequest{}
		if err := parse(req); err != nil {
			return nil, err
		}
		return client.ReportPrices(ctx, req)
	default:
		return nil, errors.New("vector " + v.Name + ": unknown method " + v.Method)
	}
}

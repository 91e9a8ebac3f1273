// Package guard is what every Go bot needs around the generated RiskService client: dial options that
// reconnect quickly after a sidecar restart, and a CanTrade that always returns a decision (fail closed),
// makes a client_order_id before the call, and denies any answer a TradeGuard server cannot send.
//
//	conn, err := grpc.Dial(addr, guard.DialOptions()...)
//	decision, err := guard.CanTrade(ctx, conn, &tradeguardv1.CanTradeRequest{...})
//	if decision.GetAllowed() { /* place the order */ }
//
// err is non-nil only when the call failed (the decision is then a SIDECAR_UNAVAILABLE denial naming the
// status); an answer that breaks the protocol is an INVALID_RESPONSE denial with a nil error.
//
// An allowed order counts as exposure until the bot reports what happened to it, under the decision's
// ClientOrderId, with the generated client's ReportOrder (FILLED, CANCELLED, REJECTED, ...). CancelAllOrders
// reads the kill switch's cancel_all_orders action from any answer's actions.
package guard

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"strings"
	"time"
	"unicode"

	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	tradeguardv1 "github.com/tradeguard/tradeguard/client/go/tradeguard/v1"
)

// Reconnect backoff, the same as the Python and TypeScript clients: the sidecar runs next to the bot, so
// after it restarts the next attempt is ~0.1 s away, not grpc-go's default 1 s growing to 120 s.
const (
	BaseDelay         = 100 * time.Millisecond
	MaxDelay          = 2 * time.Second
	MinConnectTimeout = time.Second
)

// CanTradeMethod is the full gRPC method name of RiskService.CanTrade.
const CanTradeMethod = "/tradeguard.v1.RiskService/CanTrade"

// DialOptions are the options to dial the sidecar with (plaintext; add TLS credentials yourself and drop
// the first option when the sidecar has TLS): fast reconnect backoff and a short minimum connect timeout.
func DialOptions() []grpc.DialOption {
	return []grpc.DialOption{
		grpc.WithInsecure(),
		ConnectParams(),
	}
}

// ConnectParams is the reconnect part of DialOptions alone.
func ConnectParams() grpc.DialOption {
	return grpc.WithConnectParams(grpc.ConnectParams{
		Backoff:           backoff.Config{BaseDelay: BaseDelay, Multiplier: 1.6, Jitter: 0.2, MaxDelay: MaxDelay},
		MinConnectTimeout: MinConnectTimeout,
	})
}

// NewClientOrderID returns a fresh client_order_id: "tg-" and 32 hex digits.
func NewClientOrderID() string {
	var b [16]byte
	if _, err := rand.Read(b[:]); err != nil {
		return fmt.Sprintf("tg-%032x", time.Now().UnixNano())
	}
	return "tg-" + hex.EncodeToString(b[:])
}

// rawCodec sends the request as protobuf and hands back the answer's bytes undecoded, so that an
// undecodable body becomes an INVALID_RESPONSE denial rather than an error.
type rawCodec struct{}

func (rawCodec) Marshal(v interface{}) ([]byte, error) {
	m, ok := v.(proto.Message)
	if !ok {
		return nil, fmt.Errorf("guard: cannot marshal %T", v)
	}
	return proto.Marshal(m)
}

func (rawCodec) Unmarshal(data []byte, v interface{}) error {
	out, ok := v.(*[]byte)
	if !ok {
		return fmt.Errorf("guard: cannot unmarshal into %T", v)
	}
	*out = append((*out)[:0], data...)
	return nil
}

func (rawCodec) Name() string { return "proto" }

// CanTrade asks the sidecar. It always returns a decision: the sidecar's, a SIDECAR_UNAVAILABLE denial
// when the call failed (err is the call's error), or an INVALID_RESPONSE denial when the answer breaks the
// protocol (err nil). An order without client_order_id gets one first (req is not changed; the id is
// in the decision's ClientOrderId). Give ctx a deadline.
func CanTrade(ctx context.Context, conn grpc.ClientConnInterface, req *tradeguardv1.CanTradeRequest, opts ...grpc.CallOption) (*tradeguardv1.CanTradeResponse, error) {
	orderID := ""
	if req.GetOrder() != nil {
		orderID = req.GetOrder().GetClientOrderId()
		if orderID == "" {
			req = proto.Clone(req).(*tradeguardv1.CanTradeRequest)
			orderID = NewClientOrderID()
			req.Order.ClientOrderId = orderID
		}
	}
	var body []byte
	err := conn.Invoke(ctx, CanTradeMethod, req, &body, append(opts, grpc.ForceCodec(rawCodec{}))...)
	if err != nil {
		d := Unavailable(err)
		d.ClientOrderId = orderID
		return d, err
	}
	resp := &tradeguardv1.CanTradeResponse{}
	if uerr := proto.Unmarshal(body, resp); uerr != nil {
		return Invalid(fmt.Sprintf("the body (%d bytes) is not a CanTradeResponse (%v)", len(body), uerr), nil, orderID), nil
	}
	if why := ProtocolViolation(resp); why != "" {
		return Invalid(why, resp, orderID), nil
	}
	if resp.ClientOrderId == "" {
		resp.ClientOrderId = orderID
	}
	return resp, nil
}

// Unavailable is the fail-closed denial for a failed call.
func Unavailable(err error) *tradeguardv1.CanTradeResponse {
	return &tradeguardv1.CanTradeResponse{
		Allowed: false,
		Code:    tradeguardv1.DecisionCode_DECISION_CODE_SIDECAR_UNAVAILABLE,
		Reason:  "SIDECAR_UNAVAILABLE: " + ErrText(err) + "; denied because the client fails closed",
	}
}

// Invalid is the denial for an answer that breaks the protocol; never allowed, whatever else is configured.
func Invalid(why string, answer *tradeguardv1.CanTradeResponse, orderID string) *tradeguardv1.CanTradeResponse {
	reason := "INVALID_RESPONSE: the answer broke the protocol: " + why + "; denied (whatever answered cannot allow)"
	if answer.GetReason() != "" {
		r := answer.GetReason()
		if len(r) > 200 {
			r = r[:200]
		}
		reason += fmt.Sprintf("; its reason was %q", r)
	}
	return &tradeguardv1.CanTradeResponse{
		Allowed:       false,
		Code:          tradeguardv1.DecisionCode_DECISION_CODE_INVALID_RESPONSE,
		Reason:        reason,
		ClientOrderId: orderID,
	}
}

func isRuleCode(c tradeguardv1.DecisionCode) bool {
	if _, known := tradeguardv1.DecisionCode_name[int32(c)]; !known {
		return false
	}
	switch c {
	case tradeguardv1.DecisionCode_DECISION_CODE_UNSPECIFIED, tradeguardv1.DecisionCode_DECISION_CODE_ALLOWED,
		tradeguardv1.DecisionCode_DECISION_CODE_SIDECAR_UNAVAILABLE, tradeguardv1.DecisionCode_DECISION_CODE_INVALID_RESPONSE:
		return false
	}
	return true
}

func codeText(c tradeguardv1.DecisionCode) string {
	name, known := tradeguardv1.DecisionCode_name[int32(c)]
	switch {
	case !known:
		return fmt.Sprintf("unknown code %d", int32(c))
	case c == tradeguardv1.DecisionCode_DECISION_CODE_UNSPECIFIED:
		return fmt.Sprintf("%s (%d, never sent by a server)", name, int32(c))
	case c == tradeguardv1.DecisionCode_DECISION_CODE_SIDECAR_UNAVAILABLE || c == tradeguardv1.DecisionCode_DECISION_CODE_INVALID_RESPONSE:
		return fmt.Sprintf("%s (%d, set by clients only)", name, int32(c))
	}
	return fmt.Sprintf("%s (%d)", name, int32(c))
}

// ProtocolViolation says why resp is an answer no TradeGuard server sends, or "" when it is a valid one.
// Valid: allowed with DECISION_CODE_ALLOWED; allowed with a rule's code and would_deny (shadow mode);
// denied with a rule's code; and every timestamp within 0001-01-01..9999-12-31.
func ProtocolViolation(resp *tradeguardv1.CanTradeResponse) string {
	for name, ts := range map[string]*timestamppb.Timestamp{
		"paused_until":         resp.GetPausedUntil(),
		"state.paused_until":   resp.GetState().GetPausedUntil(),
		"state.last_equity_at": resp.GetState().GetLastEquityAt(),
		"state.updated_at":     resp.GetState().GetUpdatedAt(),
	} {
		if ts != nil {
			if err := ts.CheckValid(); err != nil {
				return "a field cannot be read (" + name + ": " + err.Error() + ")"
			}
		}
	}
	c := resp.GetCode()
	if resp.GetAllowed() {
		if c == tradeguardv1.DecisionCode_DECISION_CODE_ALLOWED {
			return ""
		}
		if isRuleCode(c) {
			if resp.GetWouldDeny() {
				return ""
			}
			return "allowed=true with the rule code " + codeText(c) +
				" but would_deny=false (only shadow mode allows with a rule's code, and it sets would_deny)"
		}
		return "allowed=true with " + codeText(c)
	}
	if isRuleCode(c) {
		return ""
	}
	return "allowed=false with " + codeText(c)
}

// ErrText is "CODE: message" for a gRPC status error (canonical code names, e.g. UNAVAILABLE).
func ErrText(err error) string {
	if st, ok := status.FromError(err); ok {
		return CodeName(st.Code()) + ": " + st.Message()
	}
	return err.Error()
}

// CodeName is the canonical gRPC status code name (UNAVAILABLE, INVALID_ARGUMENT, ...), as every other
// gRPC implementation spells it; Go's codes.Code.String() says "Unavailable".
func CodeName(c codes.Code) string {
	if c == codes.OK {
		return "OK"
	}
	var b strings.Builder
	for i, r := range c.String() {
		if i > 0 && unicode.IsUpper(r) {
			b.WriteByte('_')
		}
		b.WriteRune(unicode.ToUpper(r))
	}
	return b.String()
}

// CancelAllOrders says whether actions (of any answer: CanTrade, a report, a WatchRiskState update) ask the
// bot to cancel every working order at the venue now (ACTION_TYPE_CANCEL_ALL_ORDERS: the trader was HALTED),
// and the client_order_ids they list: the pending orders the sidecar knows of, each once. Cancel every
// working order, then report each with ReportOrder ORDER_STATUS_CANCELLED (until then they stay counted).
func CancelAllOrders(actions []*tradeguardv1.RequiredAction) (ids []string, cancel bool) {
	seen := map[string]bool{}
	for _, a := range actions {
		if a.GetType() != tradeguardv1.ActionType_ACTION_TYPE_CANCEL_ALL_ORDERS {
			continue
		}
		cancel = true
		for _, id := range a.GetClientOrderIds() {
			if !seen[id] {
				seen[id] = true
				ids = append(ids, id)
			}
		}
	}
	return ids, cancel
}

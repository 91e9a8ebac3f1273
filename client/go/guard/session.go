package guard

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	tradeguardv1 "github.com/tradeguard/tradeguard/client/go/tradeguard/v1"
)

// Session keeps one RiskService.Session stream (issue 18) and sends calls over it: one answer per request, in
// order, each exactly what the unary RPC answers. A broken stream fails the calls in flight with its status (so
// CanTrade fails closed, SIDECAR_UNAVAILABLE) and the next call opens a new stream (the connection reconnects with
// DialOptions' backoff). Safe for concurrent use. Close half-closes the stream: a clean close, which never
// triggers cancel-on-disconnect.
//
//	s := guard.NewSession(conn, guard.OnDisconnect("bot-1", "acct-1", "HALTED", 0))
//	defer s.Close()
//	decision, err := s.CanTrade(ctx, &tradeguardv1.CanTradeRequest{...})
type Session struct {
	client tradeguardv1.RiskServiceClient
	md     metadata.MD

	mu      sync.Mutex // the stream, the ids and the calls waiting
	sendMu  sync.Mutex // one Send at a time (never held with mu: the reader needs mu to deliver)
	stream  tradeguardv1.RiskService_SessionClient
	cancel  context.CancelFunc
	done    chan struct{} // closed when the stream's reader returns
	nextID  uint64
	pending map[uint64]chan sessionResult
}

type sessionResult struct {
	resp *tradeguardv1.SessionResponse
	err  error
}

// OnDisconnect is the metadata that declares cancel-on-disconnect: when the session ends without a clean close,
// the sidecar pauses traderID (state "HALTED" or "REDUCING") for seconds (0: until resumed).
func OnDisconnect(traderID, accountID, state string, seconds float64) metadata.MD {
	md := metadata.Pairs("tradeguard-session-trader-id", traderID, "tradeguard-session-account-id", accountID,
		"tradeguard-session-on-disconnect", state)
	if seconds > 0 {
		md.Set("tradeguard-session-on-disconnect-seconds", fmt.Sprintf("%g", seconds))
	}
	return md
}

// NewSession returns a Session on conn; md (may be nil) goes with every stream it opens (a token, OnDisconnect).
func NewSession(conn grpc.ClientConnInterface, md metadata.MD) *Session {
	return &Session{client: tradeguardv1.NewRiskServiceClient(conn), md: md, pending: map[uint64]chan sessionResult{}}
}

// open returns the stream, opening one when there is none (s.mu held).
func (s *Session) open() (tradeguardv1.RiskService_SessionClient, error) {
	if s.stream != nil {
		return s.stream, nil
	}
	ctx, cancel := context.WithCancel(context.Background())
	if s.md != nil {
		ctx = metadata.NewOutgoingContext(ctx, s.md)
	}
	stream, err := s.client.Session(ctx)
	if err != nil {
		cancel()
		return nil, err
	}
	s.stream, s.cancel, s.done = stream, cancel, make(chan struct{})
	go s.read(stream, s.done)
	return stream, nil
}

func (s *Session) read(stream tradeguardv1.RiskService_SessionClient, done chan struct{}) {
	defer close(done)
	for {
		resp, err := stream.Recv()
		s.mu.Lock()
		if err != nil {
			if s.stream == stream {
				s.stream = nil
				s.cancel()
			}
			if errors.Is(err, io.EOF) {
				err = status.Error(codes.Unavailable, "session stream ended")
			}
			for id, ch := range s.pending {
				ch <- sessionResult{err: err}
				delete(s.pending, id)
			}
			s.mu.Unlock()
			return
		}
		ch, ok := s.pending[resp.GetRequestId()]
		delete(s.pending, resp.GetRequestId())
		s.mu.Unlock()
		if ok {
			ch <- sessionResult{resp: resp}
		}
	}
}

// Do sends one request (its request_id is set here) and waits for its answer, at most until ctx ends.
func (s *Session) Do(ctx context.Context, req *tradeguardv1.SessionRequest) (*tradeguardv1.SessionResponse, error) {
	// Opening the stream waits for the connection (a sidecar that accepts and stays silent holds it): the call's
	// deadline bounds the whole call, opening included; a call given up on leaves its goroutine to finish alone.
	out := make(chan sessionResult, 1)
	go func() {
		resp, err := s.do(ctx, req)
		out <- sessionResult{resp: resp, err: err}
	}()
	select {
	case r := <-out:
		return r.resp, r.err
	case <-ctx.Done():
		return nil, status.FromContextError(ctx.Err()).Err()
	}
}

func (s *Session) do(ctx context.Context, req *tradeguardv1.SessionRequest) (*tradeguardv1.SessionResponse, error) {
	ch := make(chan sessionResult, 1)
	s.mu.Lock()
	stream, err := s.open()
	if err != nil {
		s.mu.Unlock()
		return nil, err
	}
	s.nextID++
	id := s.nextID
	req.RequestId = id
	s.pending[id] = ch
	s.mu.Unlock()
	s.sendMu.Lock()
	err = stream.Send(req)
	s.sendMu.Unlock()
	if err != nil { // the stream broke: the reader fails every call in flight, this one too
		r := <-ch
		if r.err != nil {
			return nil, r.err
		}
		return r.resp, nil
	}
	select {
	case r := <-ch:
		return r.resp, r.err
	case <-ctx.Done():
		s.mu.Lock()
		delete(s.pending, id)
		s.mu.Unlock()
		return nil, status.FromContextError(ctx.Err()).Err()
	}
}

// CanTrade is guard.CanTrade over the session: always a decision (SIDECAR_UNAVAILABLE with err when the call
// failed, INVALID_RESPONSE for an answer that breaks the protocol); an error answer is returned as its status.
func (s *Session) CanTrade(ctx context.Context, req *tradeguardv1.CanTradeRequest) (*tradeguardv1.CanTradeResponse, error) {
	orderID := ""
	if req.GetOrder() != nil {
		orderID = req.GetOrder().GetClientOrderId()
		if orderID == "" {
			req = proto.Clone(req).(*tradeguardv1.CanTradeRequest)
			orderID = NewClientOrderID()
			req.Order.ClientOrderId = orderID
		}
	}
	resp, err := s.Do(ctx, &tradeguardv1.SessionRequest{Call: &tradeguardv1.SessionRequest_CanTrade{CanTrade: req}})
	if err == nil && resp.GetError() != nil {
		err = status.ErrorProto(resp.GetError())
	}
	if err != nil {
		d := Unavailable(err)
		d.ClientOrderId = orderID
		return d, err
	}
	answer := resp.GetCanTrade()
	if answer == nil {
		return Invalid("the session answered something else than a CanTradeResponse", nil, orderID), nil
	}
	if why := ProtocolViolation(answer); why != "" {
		return Invalid(why, answer, orderID), nil
	}
	if answer.ClientOrderId == "" {
		answer.ClientOrderId = orderID
	}
	return answer, nil
}

// Close half-closes the stream (a clean close: no cancel-on-disconnect) and stops reading.
func (s *Session) Close() error {
	s.mu.Lock()
	stream, cancel, done := s.stream, s.cancel, s.done
	s.stream = nil
	s.mu.Unlock()
	if stream == nil {
		return nil
	}
	s.sendMu.Lock()
	err := stream.CloseSend()
	s.sendMu.Unlock()
	select { // the sidecar ends the stream at once after a half-close; the reader sees it
	case <-done:
	case <-time.After(time.Second):
	}
	cancel()
	return err
}

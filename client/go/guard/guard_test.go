package guard

import (
	"reflect"
	"testing"

	tradeguardv1 "github.com/tradeguard/tradeguard/client/go/tradeguard/v1"
)

func TestCancelAllOrdersListsEachPendingIDOnceAndIgnoresOtherActions(t *testing.T) {
	actions := []*tradeguardv1.RequiredAction{
		{Type: tradeguardv1.ActionType_ACTION_TYPE_PAUSE_TRADING},
		{Type: tradeguardv1.ActionType_ACTION_TYPE_CANCEL_ALL_ORDERS, ClientOrderIds: []string{"o-1", "o-2"}},
		{Type: tradeguardv1.ActionType_ACTION_TYPE_CANCEL_ALL_ORDERS, ClientOrderIds: []string{"o-2", "o-3"}},
	}

	ids, cancel := CancelAllOrders(actions)

	if !cancel || !reflect.DeepEqual(ids, []string{"o-1", "o-2", "o-3"}) {
		t.Fatalf("CancelAllOrders = %v, %t", ids, cancel)
	}
}

func TestCancelAllOrdersWithoutPendingOrdersStillAsksToCancel(t *testing.T) {
	ids, cancel := CancelAllOrders([]*tradeguardv1.RequiredAction{{Type: tradeguardv1.ActionType_ACTION_TYPE_CANCEL_ALL_ORDERS}})

	if !cancel || len(ids) != 0 {
		t.Fatalf("CancelAllOrders = %v, %t", ids, cancel)
	}
}

func TestNoCancelAction(t *testing.T) {
	ids, cancel := CancelAllOrders([]*tradeguardv1.RequiredAction{{Type: tradeguardv1.ActionType_ACTION_TYPE_CLOSE_POSITION, Symbol: "BTCUSDT"}})

	if cancel || ids != nil {
		t.Fatalf("CancelAllOrders = %v, %t", ids, cancel)
	}
	if _, cancel := CancelAllOrders(nil); cancel {
		t.Fatal("nil actions asked to cancel")
	}
}

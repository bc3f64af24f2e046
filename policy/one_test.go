package policy

import (
	"context"
	"net/http"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/edgelimit/caddy-edgelimit/store"
)

// One decides, answers and records a policy of one limit as Plan, Take,
// Judge, WriteHeaders and Record do, passing or denying, whatever the
// header style and algorithm; a policy that One may not decide says so.
func TestOneAsTheSteps(t *testing.T) {
	for _, style := range []string{"x-ratelimit", "both", "none", "x-ratelimit anchored_window", "x-ratelimit sliding_window", "x-ratelimit token_bucket", "x-ratelimit gcra"} {
		algorithm := ""
		if i := strings.IndexByte(style, ' '); i > 0 {
			style, algorithm = style[:i], style[i+1:]
		}
		n := Numbers{Algorithm: algorithm, Limit: 2, Window: time.Minute}
		if algorithm == "token_bucket" {
			n.Refill = 2
		}
		l, err := Compile(&Spec{Name: "per_client", Numbers: n}, "z")
		if err != nil {
			t.Fatal(err)
		}
		p, err := New([]*Limit{l}, &Responses{Headers: style, TimeHeader: style == "both"})
		if err != nil || !p.One {
			t.Fatalf("%s: One %v, %v", style, p != nil && p.One, err)
		}
		now := time.Unix(1_700_000_000, 123_000)
		one, steps := store.NewMemory(store.MemoryOptions{}), store.NewMemory(store.MemoryOptions{})
		for i := 0; i < 3; i++ {
			d1, d2 := NewDecision(p), NewDecision(p)
			for _, d := range []*Decision{d1, d2} {
				d.Keys[0], d.Parts[0] = "client", 0
			}
			h1, h2 := http.Header{}, http.Header{}
			var l1, l2 Ledger
			passed := One(p, d1, one, now.UnixMicro(), h1, &l1)
			Plan(p, d2, nil)
			if err := store.Take(steps, context.Background(), now, d2.Reqs, d2.Res); err != nil {
				t.Fatal(err)
			}
			denied, report := Judge(d2)
			if denied < 0 {
				WriteHeaders(p, h2, d2, report, false, nil)
				Record(&l2, steps, d2, report)
			}
			if passed != (denied < 0) || i < 2 != passed {
				t.Fatalf("%s, request %d: One passed %v, the steps denied with %d", style, i, passed, denied)
			}
			if !passed {
				// The caller judges: what One left is what Judge judges.
				if dd, rr := Judge(d1); dd != denied || rr != report {
					t.Fatalf("%s: judged %d %d, want %d %d", style, dd, rr, denied, report)
				}
			}
			if !reflect.DeepEqual(h1, h2) || !reflect.DeepEqual(d1.Res, d2.Res) || !reflect.DeepEqual(d1.Reqs, d2.Reqs) {
				t.Fatalf("%s, request %d: One wrote %v (%+v), the steps %v (%+v)", style, i, h1, d1.Res, h2, d2.Res)
			}
			if len(l1.Entries) != len(l2.Entries) || l1.Report != l2.Report || l1.HasReport != l2.HasReport ||
				len(l1.Entries) == 1 && !reflect.DeepEqual(l1.Entries[0].Reqs, l2.Entries[0].Reqs) {
				t.Fatalf("%s, request %d: One recorded %+v, the steps %+v", style, i, l1, l2)
			}
		}
	}
	for _, s := range []*Spec{
		{Name: "a", Numbers: Numbers{Limit: 2, Window: time.Minute}, Ban: time.Minute},
		{Name: "a", Numbers: Numbers{Limit: 2, Window: time.Minute}, Charged: true},
		{Name: "a", Numbers: Numbers{Limit: 2, Window: time.Minute}, Exempt: []string{"b"}},
	} {
		l, err := Compile(s, "z")
		if err != nil {
			t.Fatal(err)
		}
		if p, err := New([]*Limit{l}, &Responses{}); err != nil || p.One {
			t.Errorf("%+v: One %v, %v", s, p != nil && p.One, err)
		}
	}
}

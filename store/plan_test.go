package store

import (
	"slices"
	"testing"
	"time"

	"github.com/edgelimit/caddy-edgelimit/limiter"
)

// TestPlanTake: each key's fields once, "~" first, in the order of the
// keys, and each request's code naming its field's index in ARGV, the
// rest of the code as it was.
func TestPlanTake(t *testing.T) {
	l := limiter.Limit{Algorithm: limiter.FixedWindow, Quota: 10, Window: time.Minute, Ban: 3 * time.Second}
	// Two decisions: a on k1, b on k2, a on k1 again (the same field), c
	// on k1; then b on k2 and a on k2 (a field of another key).
	decisions := [][]Request{
		{{Counter: "a", Key: "k1", Limit: l, Cost: 1}, {Counter: "b", Key: "k2", Limit: l, Cost: 1},
			{Counter: "a", Key: "k1", Limit: l, Cost: 1}, {Counter: "c", Key: "k1", Limit: l, Cost: 1, Mode: ModeCharge}},
		{{Counter: "b", Key: "k2", Limit: l, Cost: 1}, {Counter: "a", Key: "k2", Limit: l, Cost: 1}},
	}
	b := AppendTakeHead(nil, 0, int64(len(decisions)))
	var keys, fields []string
	for _, reqs := range decisions {
		clients := make([]string, len(reqs))
		for i := range reqs {
			clients[i] = reqs[i].Key
		}
		b = AppendInt(b, 0)
		b = AppendInt(b, int64(len(reqs)))
		keys, b, fields = AppendRequests(keys, b, fields, reqs, clients, nil, 0, make([][2]int64, len(reqs)))
	}
	before := slices.Clone(b)
	argv := PlanTake(new(TakePlan), []string{"spec"}, b, len(keys), fields)
	// ARGV: 1 spec, 2 ~, 3 a, 4 c (k1), 5 ~, 6 b, 7 a (k2).
	if want := []string{"spec", "~", "a", "c", "~", "b", "a"}; !slices.Equal(argv, want) {
		t.Fatalf("argv %q, want %q", argv, want)
	}
	want := []int{3, 6, 3, 4, 6, 7}
	pos, r := 16, 0
	for _, reqs := range decisions {
		pos += 16
		for range reqs {
			code, was := readInt(string(b), pos), readInt(string(before), pos)
			if f := int(code % (1 << 32) / 256); f != want[r] {
				t.Errorf("request %d names ARGV[%d], want %d", r, f, want[r])
			}
			if code%256 != was%256 || code>>32 != was>>32 {
				t.Errorf("request %d: code %x, was %x: more than the key changed", r, code, was)
			}
			if string(b[pos+8:pos+40]) != string(before[pos+8:pos+40]) {
				t.Errorf("request %d: its numbers changed", r)
			}
			pos += 40
			r++
		}
	}
}

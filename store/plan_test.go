package store

import (
	"slices"
	"testing"
	"time"

	"github.com/edgelimit/caddy-edgelimit/limiter"
)

// TestPlanTake: each key's fields once, in the order of the keys, each
// request's code naming its key and its field's place among the key's, the
// rest of the code as it was, and after the decisions each key's first
// entry's index in ARGV and its number of entries.
func TestPlanTake(t *testing.T) {
	l := limiter.Limit{Algorithm: limiter.FixedWindow, Quota: 10, Window: time.Minute, Ban: 3 * time.Second}
	tb := limiter.Limit{Algorithm: limiter.TokenBucket, Quota: 10, Rate: 1, Window: time.Second}
	// Two decisions: a on k1, b on k2, a on k1 again (the same field), c
	// on k1; then b on k2 and a on k2 (a field of another key, a token
	// bucket: k2's HMGET reads the TTL's mark first).
	decisions := [][]Request{
		{{Counter: "a", Key: "k1", Limit: l, Cost: 1}, {Counter: "b", Key: "k2", Limit: l, Cost: 1},
			{Counter: "a", Key: "k1", Limit: l, Cost: 1}, {Counter: "c", Key: "k1", Limit: l, Cost: 1, Mode: ModeCharge}},
		{{Counter: "b", Key: "k2", Limit: l, Cost: 1}, {Counter: "a", Key: "k2", Limit: tb, Cost: 1}},
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
	n := len(b)
	argv, b := PlanTake(new(TakePlan), []string{"spec"}, b, len(keys), fields)
	// ARGV: 1 spec, 2 a, 3 c (k1), 4 ~, 5 b, 6 a (k2).
	if want := []string{"spec", "a", "c", "~", "b", "a"}; !slices.Equal(argv, want) {
		t.Fatalf("argv %q, want %q", argv, want)
	}
	// The index of each key's first entry * 2^21, plus its number of fields
	// (plus 2^20: the first is "~").
	if len(b) != n+16 || readInt(string(b), n) != 2<<21|2 || readInt(string(b), n+8) != 4<<21|1<<20|2 {
		t.Fatalf("the keys' words: %x, want 2<<21|2 and 4<<21|1<<20|2", b[n:])
	}
	// k*4096 + s: k1's a and c, k2's b and a (after its "~").
	want := []int{1<<12 + 1, 2<<12 + 2, 1<<12 + 1, 1<<12 + 2, 2<<12 + 2, 2<<12 + 3}
	pos, r := 16, 0
	for _, reqs := range decisions {
		pos += 16
		for range reqs {
			code, was := readInt(string(b), pos), readInt(string(before), pos)
			if f := int(code % (1 << 32) / 256); f != want[r] {
				t.Errorf("request %d names %#x, want %#x", r, f, want[r])
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

// TestPlanTakeMarksPlainTakes: bit 6 of a code marks a take of an aligned
// or a calendar window with no ban, no dry run, no states kept, on a
// counter no earlier request of its decision names (the take script's
// shorter path); nothing else.
func TestPlanTakeMarksPlainTakes(t *testing.T) {
	fixed := limiter.Limit{Algorithm: limiter.FixedWindow, Quota: 10, Window: time.Minute}
	day := limiter.Limit{Algorithm: limiter.FixedWindow, Quota: 10, Calendar: limiter.CalendarWindow{Period: limiter.Day}.Cached()}
	banned := fixed
	banned.Ban = time.Second
	reqs := []Request{
		{Counter: "a", Key: "k", Limit: fixed, Cost: 1},                   // plain
		{Counter: "d", Key: "k", Limit: day, Cost: 1},                     // plain (calendar)
		{Counter: "a", Key: "k", Limit: fixed, Cost: 1},                   // a again
		{Counter: "b", Key: "k", Limit: fixed, Cost: 1, DryRun: true},     // dry run
		{Counter: "c", Key: "k", Limit: fixed, Cost: 1, Mode: ModeCharge}, // charge
		{Counter: "e", Key: "k", Limit: banned, Cost: 1},                  // ban
		{Counter: "f", Key: "k", Limit: limiter.Limit{Algorithm: limiter.SlidingWindow, Quota: 10, Window: time.Minute}, Cost: 1},
	}
	want := []bool{true, true, false, false, false, false, false}
	for _, flags := range []int64{0, 1} {
		b := AppendTakeHead(nil, flags, 1)
		b = AppendInt(b, 0)
		b = AppendInt(b, int64(len(reqs)))
		clients := make([]string, len(reqs))
		for i := range reqs {
			clients[i] = reqs[i].Key
		}
		keys, b, fields := AppendRequests(nil, b, nil, reqs, clients, nil, 0, make([][2]int64, len(reqs)))
		_, b = PlanTake(new(TakePlan), []string{"spec"}, b, len(keys), fields)
		for i := range reqs {
			got := b[32+40*i]&64 != 0
			if got != (want[i] && flags == 0) {
				t.Errorf("flags %d, request %d: marked %v", flags, i, got)
			}
		}
	}
}

// TestPlanTakeSharesRuns: in a batch of decisions, a key whose entries an
// earlier key's begin with names those, which ARGV holds once (clients of
// one route); a key with other entries has its own.
func TestPlanTakeSharesRuns(t *testing.T) {
	l := limiter.Limit{Algorithm: limiter.FixedWindow, Quota: 10, Window: time.Minute}
	tb := limiter.Limit{Algorithm: limiter.TokenBucket, Quota: 10, Rate: 1, Window: time.Second}
	decisions := [][]Request{
		{{Counter: "a", Key: "k1", Limit: l, Cost: 1}, {Counter: "b", Key: "k1", Limit: l, Cost: 1}},
		{{Counter: "a", Key: "k2", Limit: l, Cost: 1}, {Counter: "b", Key: "k2", Limit: l, Cost: 1}},
		{{Counter: "a", Key: "k3", Limit: l, Cost: 1}},
		{{Counter: "b", Key: "k4", Limit: l, Cost: 1}},
		{{Counter: "a", Key: "k5", Limit: tb, Cost: 1}},
		{{Counter: "a", Key: "k6", Limit: tb, Cost: 1}},
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
	n := len(b)
	// Entries of another script of the batch before: not shared, and not
	// counted in the indexes.
	p := new(TakePlan)
	argv, b := PlanTake(p, []string{"x", "a", "spec"}, b, len(keys), fields)
	if want := []string{"x", "a", "spec", "a", "b", "b", "~", "a"}; !slices.Equal(argv, want) {
		t.Fatalf("argv %q, want %q", argv, want)
	}
	// k1 and k2: a b at 2; k3: a at 2; k4: its own b at 4; k5 and k6: ~ a at 5.
	want := []int64{2<<21 | 2, 2<<21 | 2, 2<<21 | 1, 4<<21 | 1, 5<<21 | 1<<20 | 1, 5<<21 | 1<<20 | 1}
	for k := range want {
		if got := readInt(string(b), n+8*k); got != want[k] {
			t.Errorf("key %d: word %#x, want %#x", k+1, got, want[k])
		}
	}
	// The plan reused for another batch: nothing of the last one's runs.
	b = AppendTakeHead(nil, 0, 2)
	keys, fields = nil, nil
	for _, key := range []string{"k1", "k2"} {
		b = AppendInt(b, 0)
		b = AppendInt(b, 1)
		keys, b, fields = AppendRequests(keys, b, fields, []Request{{Counter: "c", Key: key, Limit: l, Cost: 1}}, []string{key}, nil, 0, make([][2]int64, 1))
	}
	n = len(b)
	argv, b = PlanTake(p, []string{"spec"}, b, len(keys), fields)
	if want := []string{"spec", "c"}; !slices.Equal(argv, want) {
		t.Fatalf("again: argv %q, want %q", argv, want)
	}
	if readInt(string(b), n) != 2<<21|1 || readInt(string(b), n+8) != 2<<21|1 {
		t.Errorf("again: words %x, want 2<<21|1 twice", b[n:])
	}
}

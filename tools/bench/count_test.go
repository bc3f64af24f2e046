package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/edgelimit/caddy-edgelimit/tools/bench/callgrind"
)

// The counts' table and issue 23's targets, on made-up counts: one
// configuration over each target, one under.
func TestCountTargets(t *testing.T) {
	r := &results{Configs: []*summary{
		{Name: "plain", Counted: &counted{Requests: 10000, Conns: 8, CaddyInstr: 100000, Allocs: 69}},
		{Name: "memory-1", Counted: &counted{Requests: 10000, Conns: 8, CaddyInstr: 110000, Allocs: 72}},
		{Name: "memory-3", Counted: &counted{Requests: 10000, Conns: 8, CaddyInstr: 103000, Allocs: 75.8}},
		{Name: "redis-3", Counted: &counted{Requests: 10000, Conns: 8, CaddyInstr: 139200, Allocs: 80.8,
			RedisInstr: ptr(89999), RedisEvalsha: ptr(0.4)}},
		{Name: "redis-hot", Counted: &counted{Requests: 10000, Conns: 8, CaddyInstr: 121500, Allocs: 73}},
	}}
	var got []target
	r.countTargets(func(name, want, v string, pass bool) { got = append(got, target{name, want, v, pass}) })
	want := []struct {
		name string
		got  string
		pass bool
	}{
		{"Caddy instructions per request, redis-3 over memory-3", "+36,200 (139,200 - 103,000)", false},
		{"Caddy allocations per request, redis-3 over memory-3", "+5.0 (80.8 - 75.8)", true},
		{"Redis instructions per three-limit decision", "89,999", true},
		{"redis-hot vs memory-1", "1.105 x (121,500 / 110,000)", false},
	}
	if len(got) != len(want) {
		t.Fatalf("got %d targets: %+v", len(got), got)
	}
	for i, w := range want {
		if !strings.HasPrefix(got[i].Name, w.name) || got[i].Got != w.got || got[i].Pass != w.pass {
			t.Errorf("target %d: got %+v, want %+v", i, got[i], w)
		}
	}
	table := r.countTable()
	for _, line := range []string{
		"| `plain` | 100,000 | - | 69.0 | - | - |",
		"| `redis-3` | 139,200 | +39,200 | 80.8 | 89,999 | 0.400 |",
		"10,000 requests over 8 keep-alive connections",
	} {
		if !strings.Contains(table, line) {
			t.Errorf("table lacks %q:\n%s", line, table)
		}
	}
	if (&results{Configs: []*summary{{Name: "plain"}}}).countTable() != "" {
		t.Error("a table without counts")
	}
}

// callgrind.Totals reads a dump's total only once the dump is complete.
func TestCallgrindTotals(t *testing.T) {
	dir := t.TempDir()
	f := filepath.Join(dir, "callgrind.out.1")
	if err := os.WriteFile(f, []byte("version: 1\ncreator: callgrind-3.19.0\nevents: Ir\nfn=(1) main\n16 42\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, ok := callgrind.Totals(f); ok {
		t.Error("a total from a dump still being written")
	}
	if err := os.WriteFile(f, []byte("version: 1\nevents: Ir\nfn=(1) main\n16 42\n\ntotals: 1234567\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if ir, ok := callgrind.Totals(f); !ok || ir != 1234567 {
		t.Errorf("got %d, %v", ir, ok)
	}
}

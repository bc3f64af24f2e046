package store

import (
	"errors"
	"strings"
	"testing"
)

func TestEvictionAdvice(t *testing.T) {
	for _, c := range []struct {
		max    int64
		policy string
		warn   bool
	}{
		{0, "allkeys-lru", false}, // no bound: Redis never evicts
		{1 << 20, "noeviction", false},
		{1 << 20, "allkeys-lru", true},
		{1 << 20, "allkeys-lfu", true},
		{1 << 20, "volatile-ttl", true}, // every counter has a TTL
	} {
		if got := EvictionAdvice(c.max, c.policy); (got != "") != c.warn || c.warn && !strings.Contains(got, c.policy) {
			t.Errorf("%d %s: %q", c.max, c.policy, got)
		}
	}
	info := "# Memory\r\nused_memory:123\r\nmaxmemory:2097152\r\nmaxmemory_human:2.00M\r\nmaxmemory_policy:allkeys-lru\r\n"
	if InfoField(info, "maxmemory") != "2097152" || InfoField(info, "maxmemory_policy") != "allkeys-lru" || InfoField(info, "max") != "" {
		t.Errorf("InfoField: %q %q", InfoField(info, "maxmemory"), InfoField(info, "maxmemory_policy"))
	}
	if !IsOOM(errors.New("OOM command not allowed when used memory > 'maxmemory'. script: x")) || IsOOM(errors.New("ERR x")) || IsOOM(nil) {
		t.Error("IsOOM")
	}
}

package store

import (
	"context"
	"errors"
	"strings"
	"testing"
)

// fakeConn is a Redis as Health asks it.
type fakeConn struct {
	pingErr, infoErr error
	info             string
	pings, infos     int
}

func (c *fakeConn) Ping(context.Context) error { c.pings++; return c.pingErr }

func (c *fakeConn) MemoryInfo(context.Context) (string, error) { c.infos++; return c.info, c.infoErr }

// TestHealth: the memory policy is read once Redis answers, and advised
// once per store, at both edges.
func TestHealth(t *testing.T) {
	ctx := context.Background()
	c := &fakeConn{pingErr: errors.New("down"), info: "# Memory\r\nmaxmemory:1048576\r\nmaxmemory_policy:allkeys-lru\r\n"}
	var h Health
	if advice, err := h.Probe(ctx, c); err == nil || advice != "" || c.infos != 0 {
		t.Fatalf("down: %q %v, %d INFO", advice, err, c.infos)
	}
	c.pingErr, c.infoErr = nil, errors.New("ERR unknown command 'INFO'")
	if advice, err := h.Probe(ctx, c); err != nil || advice != "" || c.infos != 1 {
		t.Fatalf("INFO refused: %q %v, %d INFO", advice, err, c.infos)
	}
	c.infoErr = nil
	if advice, err := h.Probe(ctx, c); err != nil || !strings.Contains(advice, "allkeys-lru") {
		t.Fatalf("evicting Redis: %q %v", advice, err)
	}
	if advice, err := h.Probe(ctx, c); err != nil || advice != "" || c.infos != 2 || c.pings != 4 {
		t.Fatalf("again: %q %v, %d INFO, %d PING", advice, err, c.infos, c.pings)
	}
	var safe Health
	c.info = "maxmemory:1048576\r\nmaxmemory_policy:noeviction\r\n"
	if advice := safe.CheckEviction(ctx, c); advice != "" || safe.CheckEviction(ctx, c) != "" || c.infos != 3 {
		t.Fatalf("noeviction: %q, %d INFO", advice, c.infos)
	}
}

func TestWarningsAndReplies(t *testing.T) {
	if FailureWarning(errors.New("dial tcp: refused")) != UnavailableWarning || FailureWarning(ErrFull) != FullWarning ||
		FailureWarning(errors.New("OOM command not allowed when used memory > 'maxmemory'")) != FullWarning {
		t.Error("FailureWarning")
	}
	for text, want := range map[string]bool{
		"NOSCRIPT No matching script. Please use EVAL.":        true, // go-redis
		"redis: NOSCRIPT No matching script. Please use EVAL.": true, // the plugin's RESP client
		"ERR Error running script (NOSCRIPT inside)":           false,
		"redis: ERR unknown command":                           false,
	} {
		if IsNoScript(errors.New(text)) != want {
			t.Errorf("IsNoScript(%q) != %t", text, want)
		}
	}
	if IsNoScript(nil) {
		t.Error("IsNoScript(nil)")
	}
	for _, c := range []struct {
		kind, ch string
		want     Received
	}{
		{"subscribe", "p:invalidate", Confirmed},
		{"subscribe", "other", Other},
		{"message", "p:invalidate", Message},
		{"pong", "", Other},
		{"", "", Other},
	} {
		if got := ReceivedOf(c.kind, c.ch, "p:invalidate"); got != c.want {
			t.Errorf("ReceivedOf(%q, %q) = %d, want %d", c.kind, c.ch, got, c.want)
		}
	}
}

// TestRedisSettings: the defaults and checks of both edges, each naming
// the option as its configuration spells it.
func TestRedisSettings(t *testing.T) {
	p, err := (&RedisSettings{}).Resolve()
	if err != nil || p != (RedisPolicy{Timeout: DefaultRedisTimeout, Prefix: DefaultRedisPrefix}) {
		t.Fatalf("defaults: %+v %v", p, err)
	}
	p, err = (&RedisSettings{Timeout: 250e6, OnError: "local", KeyPrefix: "p:", Clock: "local", DisableLocalDenials: true}).Resolve()
	if err != nil || p != (RedisPolicy{Timeout: 250e6, OnError: Local, Prefix: "p:", LocalClock: true, NoLocalDenials: true}) {
		t.Fatalf("set: %+v %v", p, err)
	}
	for _, c := range []struct {
		set          RedisSettings
		snake, camel string
	}{
		{RedisSettings{DB: -1}, "db must not be negative", ""},
		{RedisSettings{Timeout: -1}, "timeout must not be negative", ""},
		{RedisSettings{OnError: "ignore"}, `on_error "ignore": want allow, deny or local`, `onError "ignore"`},
		{RedisSettings{KeyPrefix: "a{b}"}, "key_prefix \"a{b}\": '{' and '}'", `keyPrefix "a{b}"`},
		{RedisSettings{Clock: "atomic"}, `clock "atomic": want server or local`, ""},
	} {
		for _, camel := range []bool{false, true} {
			want := c.snake
			if camel && c.camel != "" {
				want = c.camel
			}
			c.set.Camel = camel
			if _, err := c.set.Resolve(); err == nil || !strings.HasPrefix(err.Error(), want) {
				t.Errorf("%+v: %v, want %s...", c.set, err, want)
			}
		}
	}
}

func TestSettingsID(t *testing.T) {
	a := SettingsID("127.0.0.1:6379", "user", "secret", 0, RedisPolicy{Timeout: DefaultRedisTimeout, Prefix: DefaultRedisPrefix}, []string{"a", "b"})
	if a != SettingsID("127.0.0.1:6379", "user", "secret", 0, RedisPolicy{Timeout: DefaultRedisTimeout, Prefix: DefaultRedisPrefix}, []string{"a", "b"}) {
		t.Error("the same settings, another store")
	}
	if strings.Contains(a, "secret") || len(a) != 64 {
		t.Errorf("not a hash: %s", a)
	}
	for _, other := range []string{
		SettingsID("127.0.0.1:6379", "user", "secret2", 0, RedisPolicy{Timeout: DefaultRedisTimeout, Prefix: DefaultRedisPrefix}, []string{"a", "b"}),
		SettingsID("127.0.0.1:6379", "user", "secret", 0, RedisPolicy{Timeout: DefaultRedisTimeout, Prefix: DefaultRedisPrefix, LocalClock: true}, []string{"a", "b"}),
		SettingsID("127.0.0.1:6379", "user", "secret", 0, RedisPolicy{Timeout: DefaultRedisTimeout, Prefix: DefaultRedisPrefix}, []string{"a,b"}),
		SettingsID("127.0.0.1:6379", "user", "secret", "0", RedisPolicy{Timeout: DefaultRedisTimeout, Prefix: DefaultRedisPrefix}, []string{"a", "b"}),
	} {
		if other == a {
			t.Error("other settings, the same store")
		}
	}
}

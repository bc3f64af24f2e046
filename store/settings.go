package store

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/url"
	"sort"
	"strconv"
	"strings"
	"time"
)

// Settings of a Redis store that the Caddy module (over go-redis) and the
// Traefik plugin (over its own client) read alike, so that one
// configuration means the same Redis and the same keys at both edges.

// Defaults of a Redis store at both edges.
const (
	DefaultRedisAddr    = "127.0.0.1:6379" // without a URL or an address
	DefaultRedisPrefix  = "edgelimit:"
	DefaultRedisTimeout = 100 * time.Millisecond
)

// CheckPrefix checks a key prefix: '{' or '}' would make it part of the
// keys' Cluster hash tag, and move them between slots.
func CheckPrefix(prefix string) error {
	if strings.ContainsAny(prefix, "{}") {
		return fmt.Errorf("%q: '{' and '}' would change the keys' Cluster hash slots", prefix)
	}
	return nil
}

// ParseClock reads whose clock decides: server ("" too: Redis's, so that
// instances whose clocks differ agree) or local (each instance's own).
func ParseClock(s string) (local bool, err error) {
	switch s {
	case "", "server":
		return false, nil
	case "local":
		return true, nil
	}
	return false, fmt.Errorf("clock %q: want server or local", s)
}

// RedisURL is what a Redis URL says; "" and 0 for what it does not.
type RedisURL struct {
	Addr     string // host:port (localhost and 6379 when the URL has none, as go-redis)
	Username string
	Password string
	DB       int
	TLS      bool // rediss://
}

// ParseRedisURL reads redis://[user[:password]@]host[:port][/db] and
// rediss:// with net/url: the user and password percent-decoded, as
// go-redis's ParseURL reads them (the storage package's test holds the two
// to it), so that one URL means the same credentials at both edges. Its
// errors never show the password.
func ParseRedisURL(raw string) (*RedisURL, error) {
	u, err := url.Parse(raw)
	if err != nil {
		return nil, RedisURLError(raw, err)
	}
	out := &RedisURL{}
	switch u.Scheme {
	case "rediss":
		out.TLS = true
	case "redis":
	default:
		return nil, fmt.Errorf("url %s: want the redis:// or rediss:// scheme", RedactURL(raw))
	}
	if u.User != nil {
		out.Username = u.User.Username()
		out.Password, _ = u.User.Password()
	}
	host, port := u.Hostname(), u.Port()
	if host == "" {
		host = "localhost"
	}
	if port == "" {
		port = "6379"
	}
	out.Addr = net.JoinHostPort(host, port)
	if db := strings.TrimPrefix(u.Path, "/"); db != "" {
		n, err := strconv.Atoi(db)
		if err != nil || n < 0 {
			return nil, fmt.Errorf("url %s: database %q is not a number", RedactURL(raw), db)
		}
		out.DB = n
	}
	// The query: go-redis reads db there (over the path's) and refuses
	// what it does not know; of its options, this edge reads db only.
	// One silently left out would make another server or database.
	q := u.Query()
	if db := q.Get("db"); db != "" {
		n, err := strconv.Atoi(db)
		if err != nil || n < 0 {
			return nil, fmt.Errorf("url %s: database %q is not a number", RedactURL(raw), db)
		}
		out.DB = n
	}
	delete(q, "db")
	if len(q) > 0 {
		names := make([]string, 0, len(q))
		for name := range q {
			names = append(names, strconv.Quote(name))
		}
		sort.Strings(names)
		return nil, fmt.Errorf("url %s: option %s: of the query, only db is read (give the others as settings)", RedactURL(raw), strings.Join(names, ", "))
	}
	return out, nil
}

// RedisURLError is the error of a Redis URL that does not parse (err, as
// url.Parse or go-redis's ParseURL returns it), without the password: not
// the URL, nor url.Parse's detail when it may quote a piece of it (a bad
// %-escape; the "port" before a '/', '?' or '#' that ends the host early,
// in a password not percent-encoded).
func RedisURLError(raw string, err error) error {
	var ue *url.Error
	if !errors.As(err, &ue) {
		return fmt.Errorf("url %s: %v", RedactURL(raw), err)
	}
	var ee url.EscapeError
	if errors.As(ue.Err, &ee) || !userinfoWhole(raw) {
		return fmt.Errorf("url %s: does not parse as a URL (a password with '/', '?', '#', '@' or '%%' in it is written percent-encoded)", RedactURL(raw))
	}
	return fmt.Errorf("url %s: %v", RedactURL(raw), ue.Err)
}

// userinfoWhole tells whether raw's user and password, if any, end before
// its host, where url.Parse reads them (no '/', '?' or '#' before the
// '@'): its errors then quote none of them.
func userinfoWhole(raw string) bool {
	_, rest, ok := strings.Cut(raw, "://")
	if !ok {
		rest = raw
	}
	at := strings.LastIndexByte(rest, '@')
	if at < 0 {
		return true
	}
	end := strings.IndexAny(rest, "/?#")
	return end < 0 || end > at
}

// RedactURL shows a URL quoted and without its password, nor the values
// of its query (?password=...), or not at all when it does not parse (it
// may hold a password where none is expected).
func RedactURL(raw string) string {
	u, err := url.Parse(raw)
	if err != nil {
		return "(malformed, not shown: it may hold a password)"
	}
	if u.RawQuery != "" {
		q := u.Query()
		for name := range q {
			q[name] = []string{"xxxxx"}
		}
		u.RawQuery = q.Encode()
	}
	return strconv.Quote(u.Redacted())
}

// CheckAddr checks a Redis address, host:port (a host, and the port a
// number from 1 to 65535), alike at both edges. Its errors show the address quoted, but not one with an '@',
// which no host has: a URL written where an address goes, its password
// in it.
func CheckAddr(a string) error {
	if strings.IndexByte(a, '@') >= 0 {
		return errors.New("address (not shown: it may hold a password; a URL goes in url): want host:port")
	}
	host, port, err := net.SplitHostPort(a)
	if err != nil || host == "" {
		return fmt.Errorf("address %q: want host:port", a)
	}
	if n, err := strconv.Atoi(port); err != nil || n < 1 || n > 65535 {
		return fmt.Errorf("address %q: bad port %q", a, port)
	}
	return nil
}

// RedisSettings are the options of a Redis store that both edges take
// alike, as configured (the Caddy module's on_error, key_prefix...; the
// plugin's onError, keyPrefix...). Where Redis is, and how to reach it,
// each edge's client reads by itself.
type RedisSettings struct {
	DB                  int
	Timeout             time.Duration // 0: DefaultRedisTimeout
	OnError             string        // "": allow
	KeyPrefix           string        // "": DefaultRedisPrefix
	Clock               string
	DisableLocalDenials bool
	// Camel names the options in errors as the plugin does (onError), not
	// as the Caddy module does (on_error).
	Camel bool
}

// RedisPolicy is what RedisSettings say, resolved.
type RedisPolicy struct {
	Timeout        time.Duration
	OnError        OnError
	Prefix         string
	LocalClock     bool
	NoLocalDenials bool
}

// Resolve checks the settings and applies the defaults; its errors name
// the option at fault (the caller adds which storage).
func (s *RedisSettings) Resolve() (RedisPolicy, error) {
	p := RedisPolicy{Timeout: s.Timeout, Prefix: s.KeyPrefix, NoLocalDenials: s.DisableLocalDenials}
	if s.DB < 0 {
		return p, fmt.Errorf("db must not be negative, got %d", s.DB)
	}
	if p.Timeout < 0 {
		return p, fmt.Errorf("timeout must not be negative, got %s", p.Timeout)
	}
	if p.Timeout == 0 {
		p.Timeout = DefaultRedisTimeout
	}
	if s.OnError != "" {
		o, err := ParseOnError(s.OnError)
		if err != nil {
			return p, fmt.Errorf("%s %w", s.name("on_error", "onError"), err)
		}
		p.OnError = o
	}
	if p.Prefix == "" {
		p.Prefix = DefaultRedisPrefix
	}
	if err := CheckPrefix(p.Prefix); err != nil {
		return p, fmt.Errorf("%s %w", s.name("key_prefix", "keyPrefix"), err)
	}
	local, err := ParseClock(s.Clock)
	if err != nil {
		return p, err
	}
	p.LocalClock = local
	return p, nil
}

func (s *RedisSettings) name(snake, camel string) string {
	if s.Camel {
		return camel
	}
	return snake
}

// SettingsID identifies a store by everything that makes it, for an
// edge's registry of stores (two configurations with the same settings
// share one store and its connections): hashed, since the settings hold
// passwords. The parts are values (strings, numbers, flags, structs and
// slices of them), never pointers.
func SettingsID(parts ...interface{}) string {
	sum := sha256.Sum256([]byte(fmt.Sprintf("%#v", parts)))
	return hex.EncodeToString(sum[:])
}

// Package cache is a Bloom-compatible HTTP response cache: how a request
// maps to a key, which responses may be stored and for how long, the stored
// entries, the stores that keep them (memory and Redis), and request
// coalescing. It knows nothing of Caddy: the edge_cache handler (package
// edgecache) puts it in front of an upstream.
//
// The behaviour follows Bloom (github.com/valeriansaliou/bloom), which API
// clients already rely on: GET, HEAD and OPTIONS are cacheable; a fixed list
// of statuses is stored; the upstream steers the cache with
// Bloom-Response-Ignore, Bloom-Response-TTL and Bloom-Response-Buckets; the
// Bloom-Request-Shard request header selects one of 16 namespaces; the
// Authorization header is part of the key, hashed; and every response says
// what the cache did in Bloom-Status.
//
// A new store implements Store (memory.go and redis.go are the two here, and
// store_test.go's table runs against both); the edge_cache module offers it
// as a module of the edge_cache.storage namespace in edgecache/storage.go.
package cache

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"net/http"
	"strings"
	"time"

	"github.com/edgelimit/caddy-edgelimit/httpval"
)

// Status is what the cache did for a response, sent as Bloom-Status.
type Status uint8

// The Bloom-Status values.
const (
	// Miss: fetched from the upstream and stored.
	Miss Status = iota + 1
	// Hit: served from the cache.
	Hit
	// Direct: not cacheable (method, status, an opt-out, a store that
	// failed), passed straight through.
	Direct
	// Offline: the upstream could not be reached; a stale copy or an error
	// was served.
	Offline
)

func (s Status) String() string {
	switch s {
	case Miss:
		return "MISS"
	case Hit:
		return "HIT"
	case Direct:
		return "DIRECT"
	case Offline:
		return "OFFLINE"
	}
	return ""
}

// Header names, canonical as net/http keeps them.
const (
	// HeaderStatus is the response header that carries the Status.
	HeaderStatus = "Bloom-Status"
	// HeaderShard is the request header that selects a namespace, 0 to 15.
	HeaderShard = "Bloom-Request-Shard"
	// HeaderIgnore from the upstream, with value 1, keeps a response out
	// of the cache.
	HeaderIgnore = "Bloom-Response-Ignore"
	// HeaderTTL from the upstream sets the entry's lifetime in seconds.
	HeaderTTL = "Bloom-Response-Ttl"
	// HeaderBuckets from the upstream tags the entry for purging:
	// comma-separated bucket names.
	HeaderBuckets = "Bloom-Response-Buckets"
)

// Shards is the number of namespaces Bloom-Request-Shard selects from.
const Shards = 16

// IsControlHeader tells whether a response header is meant for the cache
// only and must not reach the client: the Bloom-Response-* headers, and a
// Bloom-Status the upstream may have sent (the cache sets its own).
func IsControlHeader(name string) bool {
	return len(name) >= 6 && strings.EqualFold(name[:6], "Bloom-")
}

// StripControl removes the control headers from h.
func StripControl(h http.Header) {
	for name := range h {
		if IsControlHeader(name) {
			delete(h, name)
		}
	}
}

// CacheableMethod tells whether requests of this method may be answered
// from the cache: GET, HEAD (from the GET entry) and OPTIONS.
func CacheableMethod(method string) bool {
	return method == http.MethodGet || method == http.MethodHead || method == http.MethodOptions
}

// Store keeps entries. Implementations are safe for concurrent use.
type Store interface {
	// Get returns the entry under key, fresh or stale, or nil when there
	// is none. now is the caller's clock: a store that keeps entries past
	// their Expires drops them.
	Get(ctx context.Context, key Key, now time.Time) (*Entry, error)
	// Set stores e under key, replacing what was there, until
	// e.Expires(). It returns ErrTooLarge when the entry cannot fit.
	Set(ctx context.Context, key Key, e *Entry, now time.Time) error
	// Purge removes, in one call, every entry tagged with one of
	// p.Buckets or stored for one of p.Auths, and tells how many it
	// removed (a store that cannot count returns what it deleted).
	Purge(ctx context.Context, p Purge) (int, error)
	// Close releases the store's resources.
	Close() error
}

// Purge selects entries to remove, as Bloom Control's FLUSHB (buckets) and
// FLUSHA (authorizations) do.
type Purge struct {
	// Buckets are names from Bloom-Response-Buckets.
	Buckets []string
	// Auths are hashes of Authorization header values (AuthHash).
	Auths []Hash
	// Shards limits the purge to these namespaces; empty means all.
	Shards []uint8
}

// Empty tells whether p selects nothing.
func (p *Purge) Empty() bool { return len(p.Buckets) == 0 && len(p.Auths) == 0 }

// shards returns the namespaces p covers.
func (p *Purge) shards() []uint8 {
	if len(p.Shards) > 0 {
		return p.Shards
	}
	return allShards[:]
}

var allShards = func() (s [Shards]uint8) {
	for i := range s {
		s[i] = uint8(i)
	}
	return s
}()

// ErrTooLarge is returned by Set when an entry is larger than the store
// accepts; the response is served but not cached.
var ErrTooLarge = errors.New("cache: entry too large for the store")

// Hash is a SHA-256 digest.
type Hash [sha256.Size]byte

// String returns the hash in hexadecimal.
func (h Hash) String() string { return hex.EncodeToString(h[:]) }

// ParseHash reads a hash written by String.
func ParseHash(s string) (Hash, error) {
	var h Hash
	if len(s) != hex.EncodedLen(len(h)) {
		return h, errors.New("a hash is 64 hexadecimal digits")
	}
	if _, err := hex.Decode(h[:], []byte(s)); err != nil {
		return h, errors.New("a hash is 64 hexadecimal digits")
	}
	return h, nil
}

// AuthHash is the hash under which entries of an Authorization header value
// are kept: SHA-256 of the value as the upstream reads it (trimmed, its
// scheme written one way: httpval.Credentials), as `printf '%s' "Bearer
// abc" | sha256sum` computes it. Raw credentials are never stored.
func AuthHash(authorization string) Hash {
	var buf [hashBuf]byte
	return Hash(sha256.Sum256(append(buf[:0], httpval.Credentials(httpval.Trim(authorization))...)))
}

// bucketHash names a bucket in the stores' indexes: bucket names come from
// upstream headers and may be long.
func bucketHash(name string) Hash {
	var buf [hashBuf]byte
	return Hash(sha256.Sum256(append(append(buf[:0], "bucket\x00"...), name...)))
}

// hashBuf is the size of the stack buffers that what is hashed is written
// into: a request's key fields fit in it, so deriving a key allocates
// nothing (a longer URL or header spills to the heap). A stack buffer and
// not a sync.Pool: the race detector drops pooled items at random, and the
// README's test command runs under it.
const hashBuf = 512

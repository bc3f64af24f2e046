package cache

import (
	"crypto/sha256"
	"encoding/binary"
	"net/http"

	"github.com/edgelimit/caddy-edgelimit/httpval"
)

// Key locates an entry. It is a value of fixed size: deriving and passing
// it allocates nothing.
type Key struct {
	// ID is a SHA-256 of everything that tells responses apart: the zone,
	// the namespace, the method class, host, path, query, the identity
	// (Authorization, the credential headers and the caller's values),
	// the Origin and Range request headers, and a CORS preflight's
	// Access-Control-Request-Method and -Headers.
	ID Hash
	// Auth is AuthHash of the Authorization header; valid when HasAuth.
	Auth Hash
	// HasAuth tells whether the request carried an Authorization header:
	// only then is the entry indexed for a purge by authorization.
	HasAuth bool
	// Shard is the namespace from Bloom-Request-Shard, 0 to 15.
	Shard uint8
}

// CredentialHeaders are request headers that hold an API credential besides
// Authorization: their values (as the upstream reads them) are part of
// every key, hashed, so that a response for one key is never served to a
// request with another, or with none.
var CredentialHeaders = []string{"Proxy-Authorization", "X-Api-Key", "Api-Key", "X-Auth-Token", "X-Access-Token"}

// KeyOf derives the key of r. zone separates caches that share a store
// (each edge_cache directive has its own); identity are further values that
// tell users apart (a session cookie, a user id from authentication), in a
// fixed order, empty ones included.
//
// HEAD is keyed as GET, so that a HEAD is answered from the GET entry;
// OPTIONS has entries of its own. The Origin header is part of the key as
// in Bloom, so that CORS answers never cross origins even when the upstream
// forgets Vary: Origin; Range is part of it so that a partial response is
// never served for a whole one. A CORS preflight's own request headers,
// Access-Control-Request-Method and Access-Control-Request-Headers, are
// part of it too (appendPreflight), so that one preflight's answer is
// never served to another.
func KeyOf(r *http.Request, zone string, identity []string) Key {
	var k Key
	k.Shard = ParseShard(r.Header[HeaderShard])
	var buf [hashBuf]byte
	b := buf[:0]
	if auth := httpval.First(r.Header, "Authorization"); auth != "" {
		k.Auth, k.HasAuth = AuthHash(auth), true // as a purge by authorization hashes it
	}
	b = append(b, "edge_cache/1"...)
	b = appendField(b, zone)
	b = append(b, k.Shard)
	class := r.Method
	if class == http.MethodHead {
		class = http.MethodGet
	}
	b = appendField(b, class)
	b = appendField(b, r.Host)
	b = appendField(b, r.URL.Path)
	b = appendField(b, r.URL.RawPath)
	b = appendField(b, r.URL.RawQuery)
	if k.HasAuth {
		b = append(b, 1)
		b = append(b, k.Auth[:]...)
	} else {
		b = append(b, 0)
	}
	b = binary.AppendUvarint(b, uint64(len(identity)))
	for _, v := range identity {
		b = appendField(b, v)
	}
	for _, name := range CredentialHeaders {
		b = appendField(b, httpval.First(r.Header, name))
	}
	b = appendHeader(b, r.Header["Origin"])
	b = appendHeader(b, r.Header["Range"])
	b = appendPreflight(b, r.Header)
	k.ID = sha256.Sum256(b)
	return k
}

// appendPreflight writes what a CORS preflight asks for,
// Access-Control-Request-Method and Access-Control-Request-Headers, as they
// came (each field line, in order): browsers write one question one way
// (the header names lower-cased, sorted, joined by commas), and a cache
// that joined spellings an upstream may read apart would serve the answer
// to an attacker's spelling to browsers (an upstream comparing the list as
// it is answered "authorization, content-type" with 403, stored for the
// browsers' "authorization,content-type"). A request without them (every
// request but a preflight) writes two empty fields and allocates nothing.
func appendPreflight(b []byte, h http.Header) []byte {
	b = appendHeader(b, h["Access-Control-Request-Method"])
	return appendHeader(b, h["Access-Control-Request-Headers"])
}

// ParseShard reads Bloom-Request-Shard. As in Bloom, a missing or invalid
// value selects namespace 0.
func ParseShard(vals []string) uint8 {
	if len(vals) != 1 {
		return 0
	}
	s := vals[0]
	switch {
	case len(s) == 1 && s[0] >= '0' && s[0] <= '9':
		return s[0] - '0'
	case len(s) == 2 && s[0] == '1' && s[1] >= '0' && s[1] <= '5':
		return 10 + s[1] - '0'
	}
	return 0
}

// appendField writes s length-prefixed, so that no two different field
// lists encode alike.
func appendField(b []byte, s string) []byte {
	b = binary.AppendUvarint(b, uint64(len(s)))
	return append(b, s...)
}

// appendHeader writes a header's values, telling absence from emptiness.
func appendHeader(b []byte, vals []string) []byte {
	b = binary.AppendUvarint(b, uint64(len(vals)))
	for _, v := range vals {
		b = appendField(b, v)
	}
	return b
}
